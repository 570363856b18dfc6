#![no_main]
//! Fuzz target `sidecar`; the body is `pibake::fuzzing::sidecar`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::sidecar(data));
