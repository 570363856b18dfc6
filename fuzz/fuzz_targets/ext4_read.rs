#![no_main]
//! Fuzz target `ext4_read`; the body is `pibake::fuzzing::ext4_read`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::ext4_read(data));
