#![no_main]
//! Fuzz target `xz_block`; the body is `pibake::fuzzing::xz_block`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::xz_block(data));
