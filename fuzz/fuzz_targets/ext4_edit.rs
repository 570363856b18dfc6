#![no_main]
//! Fuzz target `ext4_edit`; the body is `pibake::fuzzing::ext4_edit`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::ext4_edit(data));
