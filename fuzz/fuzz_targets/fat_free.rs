#![no_main]
//! Fuzz target `fat_free`; the body is `pibake::fuzzing::fat_free`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::fat_free(data));
