//! Getting a base image: recognising and decoding compressed images (later: the OS list,
//! downloads, the cache and verification).

pub mod decompress;
