//! pibake: bake ready-to-flash Raspberry Pi OS images on the host, offline, without mounting.
//!
//! One module per stage, each using only those below it: [`error`], [`progress`], [`parallel`],
//! [`xz`] and [`compress`] at the bottom, with [`sshkey`] (OpenSSH Ed25519 keys); [`disk`] opens a
//! base read-only under a copy-on-write layer; [`acquire`] fetches, verifies and caches bases;
//! [`fs`] reads and edits the FAT boot and ext4 root filesystems through one trait; [`facts`] says
//! what the image is; [`overlay`] loads roles and overlays, which are data; [`recipe`] checks a
//! recipe against what they declare; [`plan`] turns recipe, facts and overlays into file
//! operations; [`apply`] carries them out and [`scrub`] zeroes what they freed; [`output`] writes
//! images and their extras; [`bake`] runs the whole job; [`cluster`] reads a cluster's inventory;
//! [`cli`] is the command-line edge.

pub mod acquire;
pub mod apply;
#[cfg(test)]
mod architecture;
pub mod bake;
pub mod cli;
pub mod cluster;
pub mod compress;
pub mod disk;
pub mod error;
pub mod facts;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod output;
pub mod overlay;
pub mod parallel;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod scrub;
pub mod sshkey;
pub mod xz;
