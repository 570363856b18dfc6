//! Writing results: the base combined with the copy-on-write layer, to a file.

pub mod raw;
