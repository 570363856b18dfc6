#![no_main]
//! Fuzz target `fat_read`; the body is `pibake::fuzzing::fat_read`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::fat_read(data));
