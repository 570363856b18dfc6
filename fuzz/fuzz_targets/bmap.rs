#![no_main]
//! Fuzz target `bmap`; the body is `pibake::fuzzing::bmap`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::bmap(data));
