#![no_main]
//! Fuzz target `manifest`; the body is `pibake::fuzzing::manifest`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::manifest(data));
