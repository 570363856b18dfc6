#![no_main]
//! Fuzz target `ext4_free`; the body is `pibake::fuzzing::ext4_free`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::ext4_free(data));
