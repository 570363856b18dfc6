//! pibake: bake ready-to-flash Raspberry Pi OS images on the host, offline, without mounting.
//!
//! The pipeline, one module per stage: [`acquire`] gets a base image, [`disk`] opens it read-only
//! under a copy-on-write layer and reads its partitions, [`fs`] reads and edits the FAT boot and
//! ext4 root filesystems through one file-operations trait, [`facts`] derives what the image is,
//! and [`cli`] is the command-line edge. Below every stage: [`parallel`] (ordered parallel work),
//! [`xz`] (the `.xz` format, read and written) and [`compress`] (recognising and decoding
//! compressed bases).

pub mod acquire;
pub mod apply;
#[cfg(test)]
mod architecture;
pub mod bake;
pub mod cli;
pub mod compress;
pub mod disk;
pub mod error;
pub mod facts;
pub mod fs;
pub mod output;
pub mod overlay;
pub mod parallel;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod xz;
