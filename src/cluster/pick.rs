//! Which built image a node's card gets (`pibake cluster flash`): the one the last
//! `cluster build` into a directory recorded, and only while it still matches the inventory.

use std::path::{Path, PathBuf};

use super::build::{ClusterManifest, NodeRecord, manifest_path, mtime_ns};

/// Why no image can be handed out for a node.
#[derive(Debug, thiserror::Error)]
pub enum PickError {
    /// The directory holds no cluster build.
    #[error(
        "{} holds no cluster build (no readable cluster.manifest.json): run `pibake cluster build {} -o {}` first",
        .dir.display(), .inventory.display(), .dir.display()
    )]
    NoBuild {
        /// The images directory.
        dir: PathBuf,
        /// The inventory.
        inventory: PathBuf,
    },
    /// The node is not in that build.
    #[error("no node {node:?} in the cluster built in {}; its nodes are {}", .dir.display(), .known.join(", "))]
    UnknownNode {
        /// The name asked for.
        node: String,
        /// The images directory.
        dir: PathBuf,
        /// The nodes it has.
        known: Vec<String>,
    },
    /// The inventory changed after the build: the image may no longer be what it says.
    #[error(
        "{} changed since the images in {} were built from it: run `pibake cluster build` again first (it rewrites only the nodes that changed)",
        .inventory.display(), .dir.display()
    )]
    InventoryChanged {
        /// The inventory.
        inventory: PathBuf,
        /// The images directory.
        dir: PathBuf,
    },
    /// The image file is not the one the build wrote.
    #[error(
        "{} is not the image `cluster build` wrote (its size or time changed, or it is gone): run `pibake cluster build` again",
        .0.display()
    )]
    ImageChanged(PathBuf),
}

impl crate::error::Classify for PickError {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

/// The manifest of the cluster built from `inventory` into `dir`, refused when there is none
/// or the inventory no longer hashes as it did then.
pub(super) fn current_build(inventory: &Path, dir: &Path) -> anyhow::Result<ClusterManifest> {
    let m = ClusterManifest::read(&manifest_path(dir)).ok_or_else(|| PickError::NoBuild {
        dir: dir.to_path_buf(),
        inventory: inventory.to_path_buf(),
    })?;
    let now = crate::acquire::cache::hash_file(inventory, &mut |_| {})?;
    if now != m.inventory_sha256 {
        return Err(PickError::InventoryChanged {
            inventory: inventory.to_path_buf(),
            dir: dir.to_path_buf(),
        }
        .into());
    }
    Ok(m)
}

/// The record of `node`'s image in the cluster built from `inventory` into `dir`, checked to
/// be current: the inventory hashes as it did then, and the image is as it was written.
pub fn pick(inventory: &Path, dir: &Path, node: &str) -> anyhow::Result<NodeRecord> {
    let m = current_build(inventory, dir)?;
    let Some(rec) = m.nodes.iter().find(|n| n.hostname == node) else {
        return Err(PickError::UnknownNode {
            node: node.to_string(),
            dir: dir.to_path_buf(),
            known: m.nodes.iter().map(|n| n.hostname.clone()).collect(),
        }
        .into());
    };
    // The manifest names files as the build was told to; they sit in `dir` whatever the
    // directory the build was run from.
    let mut rec = rec.clone();
    let here = |p: &Path| p.file_name().map(|f| dir.join(f));
    let image = here(&rec.image).ok_or_else(|| PickError::ImageChanged(rec.image.clone()))?;
    let same = std::fs::metadata(&image).is_ok_and(|m| m.len() == rec.bytes)
        && mtime_ns(&image) == Some(rec.mtime_ns);
    if !same {
        return Err(PickError::ImageChanged(image).into());
    }
    rec.image = image;
    rec.bmap = rec.bmap.as_deref().and_then(here).filter(|b| b.is_file());
    Ok(rec)
}
