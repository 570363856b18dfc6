#![no_main]
//! Fuzz target `openpgp`; the body is `pibake::fuzzing::openpgp`, which the stable corpus replay runs too.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pibake::fuzzing::openpgp(data));
