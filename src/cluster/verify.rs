//! `pibake cluster verify`: rebuild every node of the last `cluster build` into a directory,
//! from the same inventory, secrets, base and epoch, and compare each image with the one
//! recorded. The golden-image check for a whole cluster.

use std::path::{Path, PathBuf};

use super::build::{ClusterManifest, Request, manifest_path};
use crate::acquire::AcquireOptions;
use crate::bake::{Options, VerifyError};
use crate::progress::Progress;

/// One node's outcome.
#[derive(Debug, Clone)]
pub struct NodeCheck {
    /// Host name.
    pub hostname: String,
    /// The image's sha256 the build recorded.
    pub expected: String,
    /// The rebuild's.
    pub actual: String,
}

/// Rebuild the cluster built from `inventory` into `dir` beside it (in a scratch directory
/// under `dir`, removed afterwards) and compare; `roles` are used when the master's manifest,
/// which records them, is gone. Refuses when the inventory or the base changed since the build.
pub fn verify(
    inventory: &Path,
    dir: &Path,
    roles: &[PathBuf],
    acquire: &AcquireOptions,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<NodeCheck>> {
    let m = super::pick::current_build(inventory, dir)?;
    let base = crate::acquire::cache::hash_file(&m.base, &mut |_| {})?;
    if base != m.base_sha256 {
        return Err(VerifyError::InputChanged {
            what: format!("the base image {}", m.base.display()),
            expected: m.base_sha256.clone(),
            actual: base,
        }
        .into());
    }
    // The master's own manifest holds what the build was told beyond the inventory: its stack
    // and the role directories.
    let master = m
        .nodes
        .first()
        .and_then(|n| n.manifest.file_name())
        .map(|f| dir.join(f))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| crate::bake::manifest::Manifest::parse(&t).ok());
    let (stack, roles) = match &master {
        Some(mm) => (mm.inputs.replay_stack(), mm.inputs.roles.clone()),
        None => ("auto".to_string(), roles.to_vec()),
    };
    let scratch = tempfile::Builder::new()
        .prefix(".pibake-verify-")
        .tempdir_in(dir)?;
    let req = Request {
        inventory: inventory.to_path_buf(),
        out_dir: scratch.path().to_path_buf(),
        format: Some(m.format.clone()),
        secrets: Some(m.secrets.clone()),
        bmap: false,
        force: true,
        options: Options {
            recipe: inventory.to_path_buf(),
            document: None,
            base: Some(m.base.display().to_string()),
            stack,
            overlays: Vec::new(),
            roles,
            epoch: Some(m.epoch),
            acquire: acquire.clone(),
            // Everything redone: no decoded copy or remembered hash stands in for work.
            trust_cache: false,
            decode_first: false,
        },
    };
    let rebuilt = super::build::build(&req, progress)?;
    let checks = m
        .nodes
        .iter()
        .map(|n| NodeCheck {
            hostname: n.hostname.clone(),
            expected: n.sha256.clone(),
            actual: rebuilt
                .nodes
                .iter()
                .find(|r| r.hostname == n.hostname)
                .map(|r| r.sha256.clone())
                .unwrap_or_default(),
        })
        .collect();
    Ok(checks)
}

/// A cluster node's manifest given to `pibake verify`: its recipe is made from the inventory
/// and the secrets, not read from a file, so only `cluster verify` can rebuild it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} is the manifest of a node of the cluster built from {}: run `pibake cluster verify {}`{}",
    .manifest.display(), .inventory.display(), .inventory.display(),
    .dir.as_ref().map(|d| format!(" -o {}", d.display())).unwrap_or_default()
)]
pub struct ClusterNode {
    /// The node manifest.
    pub manifest: PathBuf,
    /// The cluster's inventory.
    pub inventory: PathBuf,
    /// The images directory, when it is not the inventory's default.
    pub dir: Option<PathBuf>,
}

impl crate::error::Classify for ClusterNode {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

/// Refuse `manifest` when it is a node of a cluster build (see [`ClusterNode`]).
pub fn refuse_node_manifest(manifest: &Path) -> Result<(), ClusterNode> {
    let Some(inventory) = node_of_cluster(manifest) else {
        return Ok(());
    };
    let dir = manifest.parent().map(Path::to_path_buf);
    let default = super::build::default_images_dir(&inventory);
    Err(ClusterNode {
        manifest: manifest.to_path_buf(),
        dir: dir.filter(|d| *d != default),
        inventory,
    })
}

/// The inventory of the cluster whose build in the directory of `manifest` lists that node
/// manifest, if any.
fn node_of_cluster(manifest: &Path) -> Option<PathBuf> {
    let dir = manifest.parent().filter(|d| !d.as_os_str().is_empty())?;
    let m = ClusterManifest::read(&manifest_path(dir))?;
    let name = manifest.file_name()?;
    m.nodes
        .iter()
        .any(|n| n.manifest.file_name() == Some(name))
        .then(|| m.inventory.clone())
}
