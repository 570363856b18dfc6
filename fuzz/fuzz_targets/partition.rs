#![no_main]
//! Fuzz target `partition`; the body is `pibake::fuzzing::partition`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::partition(data));
