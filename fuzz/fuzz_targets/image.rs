#![no_main]
//! Fuzz target `image`; the body is `pibake::fuzzing::image`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::image(data));
