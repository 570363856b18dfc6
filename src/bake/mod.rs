//! The whole job, in four steps that each have a file: [`prepare`] (recipe, overlays, base,
//! facts, plan), the route the output is written by (`route`), [`build`] (apply, write, extras)
//! with its [`manifest`], and [`verify`] (rebuild from a manifest and compare).

mod build;
pub mod manifest;
mod prepare;
mod route;
mod verify;

use std::path::{Path, PathBuf};

pub use crate::output::route::Route;
pub use build::{Built, Extras, ImagerRequest, build};
pub use prepare::{now_secs, open_base, prepare, prepare_on, source_date_epoch};
pub use verify::{Verified, VerifyError, verify};

use crate::acquire::AcquireOptions;
use crate::acquire::cache::{self, Cache};
use crate::disk::Image;
use crate::facts::Facts;
use crate::fs::ext4::Ext4;
use crate::fs::fat::Fat;
use crate::plan::Plan;
use crate::recipe::Validated;

/// What a build or plan needs to know beyond the recipe.
#[derive(Debug, Clone)]
pub struct Options {
    /// The recipe file (for a cluster node, the inventory: relative paths are resolved from it).
    pub recipe: PathBuf,
    /// The recipe itself, when the caller made it (a cluster node's); else `recipe` is read.
    pub document: Option<crate::recipe::Document>,
    /// Base image overriding the recipe's `[image] base`.
    pub base: Option<String>,
    /// `--stack`: `auto` or the name of a stack the overlays declare.
    pub stack: String,
    /// Extra overlay directories, applied after the role's.
    pub overlays: Vec<PathBuf>,
    /// Directories of roles (one subdirectory per role), searched before the built-in ones.
    pub roles: Vec<PathBuf>,
    /// Timestamp for everything written; `None` = recipe, then `SOURCE_DATE_EPOCH`, then now.
    pub epoch: Option<i64>,
    /// Where bases come from, the cache, and how downloads are checked.
    pub acquire: AcquireOptions,
    /// Let the cache stand in for work: a decoded copy of an `.xz` base instead of decoding it,
    /// a remembered hash instead of hashing. Off for `verify`, which must redo everything.
    pub trust_cache: bool,
    /// Decode a multi-block `.xz` base into the cache before reading it, when its decoded copy
    /// will be needed anyway (a raw output): then planning and editing read the copy instead of
    /// decoding blocks one by one.
    pub decode_first: bool,
}

/// A base image found, checked and opened, before any recipe is planned against it; one base
/// can serve several builds ([`Base::fork`]).
pub struct Base {
    /// The base image path.
    pub path: PathBuf,
    /// SHA-256 of the base file.
    pub sha256: String,
    /// The cache of decoded bases and derived hashes.
    pub cache: Cache,
    /// The cached decoded copy of an `.xz` base that reads go to, if there is one.
    pub decoded_copy: Option<PathBuf>,
    /// True when that copy was decoded by this run.
    pub decoded_now: bool,
    /// The opened image.
    pub image: Image,
}

impl Base {
    /// Another handle on the same base for another build: its own copy-on-write layer over the
    /// same bytes (decoded `.xz` blocks are shared). `None` for a base decoded into a temporary
    /// file rather than the cache.
    pub fn fork(&self) -> Option<Base> {
        Some(Base {
            path: self.path.clone(),
            sha256: self.sha256.clone(),
            cache: self.cache.clone(),
            decoded_copy: self.decoded_copy.clone(),
            decoded_now: self.decoded_now,
            image: self.image.fork()?,
        })
    }
}

/// Inputs resolved and opened, ready to plan against.
pub struct Prepared {
    /// The validated recipe.
    pub recipe: Validated,
    /// The base image path.
    pub base: PathBuf,
    /// SHA-256 of the base file (the cache's key for its decoded image).
    pub base_sha256: String,
    /// The cache of decoded bases and derived hashes.
    pub cache: Cache,
    /// The cached decoded copy of an `.xz` base that reads go to, if there is one.
    pub decoded_copy: Option<PathBuf>,
    /// True when that copy was decoded by this run.
    pub decoded_now: bool,
    /// See [`Options::trust_cache`].
    pub trust_cache: bool,
    /// The opened image (copy-on-write over the base).
    pub image: Image,
    /// The root filesystem, writable into the layer.
    pub root: Ext4,
    /// The boot filesystem, writable into the layer.
    pub boot: Fat,
    /// What the image is.
    pub facts: Facts,
    /// The plan.
    pub plan: Plan,
    /// Where the epoch came from, for the manifest.
    pub epoch_source: String,
    /// The recipe file.
    pub recipe_path: PathBuf,
    /// Extra overlay directories used.
    pub overlay_dirs: Vec<PathBuf>,
    /// Role directories searched.
    pub role_dirs: Vec<PathBuf>,
}

/// No base image named anywhere.
#[derive(Debug, thiserror::Error)]
#[error("no base image: give --base IMAGE or set `base` under [image] in the recipe")]
pub struct NoBase;

impl crate::error::Classify for NoBase {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

/// `SOURCE_DATE_EPOCH` is set but is not a number of seconds.
#[derive(Debug, thiserror::Error)]
#[error("SOURCE_DATE_EPOCH={0:?} is not a number of seconds")]
pub struct BadEpoch(pub String);

impl crate::error::Classify for BadEpoch {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

/// SHA-256 of a file, hex, read in full every time (no memo: `verify` relies on that).
fn sha256_file(path: &Path) -> std::io::Result<String> {
    cache::hash_file(path, &mut |_| {})
}
