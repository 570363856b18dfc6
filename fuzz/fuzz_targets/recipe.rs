#![no_main]
//! Fuzz target `recipe`; the body is `pibake::fuzzing::recipe`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::recipe(data));
