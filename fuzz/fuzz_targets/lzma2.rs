#![no_main]
//! Fuzz target `lzma2`; the body is `pibake::fuzzing::lzma2`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::lzma2(data));
