#![no_main]
//! Fuzz target `oslist`; the body is `pibake::fuzzing::oslist`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::oslist(data));
