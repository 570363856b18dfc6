#![no_main]
//! Fuzz target `xz_index`; the body is `pibake::fuzzing::xz_index`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::xz_index(data));
