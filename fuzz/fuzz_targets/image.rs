#![no_main]
//! Fuzz target `image`; the body is `pibake::fuzzing::image`, which the stable corpus replay runs too.
//! Panics inside fatfs unwind to pibake's guard instead of aborting (see `let_fatfs_panics_unwind`).

libfuzzer_sys::fuzz_target!(
    init: pibake::fuzzing::let_fatfs_panics_unwind(),
    |data: &[u8]| pibake::fuzzing::image(data)
);
