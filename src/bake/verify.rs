//! `verify`: rebuild what a manifest describes from the same inputs and compare the result
//! with what it recorded.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::manifest::Manifest;
use super::route::apply_and_write;
use super::{Options, prepare, sha256_file};
use crate::acquire::AcquireOptions;
use crate::progress::Progress;

/// Why `verify` could not even try.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The manifest is not one pibake wrote.
    #[error("{path}: not a pibake manifest ({what})")]
    BadManifest {
        /// The manifest path.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// An input changed since the manifest was written.
    #[error("{what} changed since the build: sha256 {actual}, the manifest recorded {expected}")]
    InputChanged {
        /// Which input.
        what: String,
        /// Recorded.
        expected: String,
        /// Now.
        actual: String,
    },
}

impl crate::error::Classify for VerifyError {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

/// The outcome of `verify`.
#[derive(Debug)]
pub struct Verified {
    /// sha256 the manifest recorded for the output.
    pub expected: String,
    /// sha256 of the rebuild.
    pub actual: String,
}

/// Rebuild what `manifest` describes and compare the result's sha256 with the one recorded.
pub fn verify(
    manifest: &Path,
    acquire: &AcquireOptions,
    progress: &dyn Progress,
) -> anyhow::Result<Verified> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let bad = |what: String| VerifyError::BadManifest {
        path: manifest.to_path_buf(),
        what,
    };
    let m = Manifest::parse(&text).map_err(bad)?;
    let inputs = &m.inputs;
    let base = inputs.base.path.clone();
    let recipe = inputs.recipe.path.clone();
    for (what, path, expected) in [
        ("the base image", &base, &inputs.base.sha256),
        ("the recipe", &recipe, &inputs.recipe.sha256),
    ] {
        let actual =
            sha256_file(path).with_context(|| format!("reading {what} {}", path.display()))?;
        if &actual != expected {
            return Err(VerifyError::InputChanged {
                what: format!("{what} {}", path.display()),
                expected: expected.clone(),
                actual,
            }
            .into());
        }
    }
    let stack = inputs.replay_stack();
    let overlays = inputs.overlays.clone();
    let roles = inputs.roles.clone();
    let epoch = inputs.epoch;
    // The raw image is what is compared, whatever format the build wrote; a patched .img.xz
    // (no raw hash recorded) is rebuilt the same way and compared as a file.
    let (out_path, sha256, raw_sha256) = m
        .image()
        .ok_or_else(|| bad("its first output is not an image".into()))?;
    let by_raw = raw_sha256.is_some();
    let expected = raw_sha256.unwrap_or(sha256).clone();
    let out_path = out_path.clone();
    let opts = Options {
        recipe,
        document: None,
        base: Some(base.display().to_string()),
        stack,
        overlays,
        roles,
        epoch: Some(epoch),
        acquire: acquire.clone(),
        trust_cache: false,
        decode_first: false,
    };
    let prepared = prepare(&opts, progress)?;
    // Rebuild beside the original so the comparison never depends on a temp filesystem's space.
    let dir = out_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".pibake-verify-")
        .suffix(if by_raw { ".img" } else { ".img.xz" })
        .tempfile_in(dir)?;
    let mut p = prepared;
    let (_, written, _) = apply_and_write(&mut p, tmp.path(), None, progress)?;
    let actual = if by_raw {
        written.raw_sha256.unwrap_or_default()
    } else {
        written.sha256
    };
    Ok(Verified { expected, actual })
}
