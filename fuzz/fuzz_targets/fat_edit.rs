#![no_main]
//! Fuzz target `fat_edit`; the body is `pibake::fuzzing::fat_edit`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::fat_edit(data));
