#![no_main]
//! Fuzz target `overlay`; the body is `pibake::fuzzing::overlay`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::overlay(data));
