#![no_main]
//! Fuzz target `facts`; the body is `pibake::fuzzing::facts`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::facts(data));
