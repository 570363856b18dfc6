//! `pibake cluster build`: every node of an inventory baked from one base, opened once and
//! shared (an `.xz` base's decoded blocks serve every node), each written by the cheapest
//! route, plus one cluster manifest. A node whose inputs are unchanged since the last build
//! into the same directory is not written again, so its image stays byte for byte the same.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::inventory::{self, Inventory, Node};
use super::secrets::Secrets;
use super::trust::Trust;
use crate::bake::{self, Extras, Options};
use crate::overlay::Layers;
use crate::progress::Progress;
use crate::recipe::RecipeReadError;

/// What to build.
#[derive(Debug, Clone)]
pub struct Request {
    /// The inventory file.
    pub inventory: PathBuf,
    /// The directory the images go to (created if missing).
    pub out_dir: PathBuf,
    /// Output format as an extension (`img.xz`); default the inventory's, else `img.xz`.
    pub format: Option<String>,
    /// The secrets directory; default `NAME.secrets` beside the inventory (`cluster.secrets`).
    pub secrets: Option<PathBuf>,
    /// Also write a `.bmap` beside each image.
    pub bmap: bool,
    /// Write every node, even those whose inputs did not change.
    pub force: bool,
    /// What every node's build shares: `--base`, stack, roles, epoch, acquisition. Its `recipe`
    /// is replaced by the inventory and `document` by each node's recipe.
    pub options: Options,
}

/// The cluster manifest, `DIR/cluster.manifest.json`: what was built from what, no secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterManifest {
    /// pibake's version.
    pub pibake: String,
    /// The inventory file.
    pub inventory: PathBuf,
    /// Its SHA-256.
    pub inventory_sha256: String,
    /// Cluster name.
    pub name: String,
    /// DNS domain.
    pub domain: String,
    /// The base image.
    pub base: PathBuf,
    /// Its SHA-256.
    pub base_sha256: String,
    /// Timestamp of everything written.
    pub epoch: i64,
    /// Where it came from.
    pub epoch_source: String,
    /// Output format, as an extension.
    pub format: String,
    /// The secrets directory (its contents are never recorded).
    pub secrets: PathBuf,
    /// Every node, master first.
    pub nodes: Vec<NodeRecord>,
}

/// One node's outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Host name.
    pub hostname: String,
    /// `master` or `worker`.
    pub role: String,
    /// LAN address.
    pub address: String,
    /// Ethernet MAC, when the inventory gives one.
    pub mac: Option<String>,
    /// The image.
    pub image: PathBuf,
    /// Its length.
    pub bytes: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// Its modification time (ns since 1970) when written, to tell it was not touched since.
    pub mtime_ns: u128,
    /// The block map, when written.
    pub bmap: Option<PathBuf>,
    /// The node's own build manifest.
    pub manifest: PathBuf,
    /// SHA-256 over everything the image is made from (base, plan with secrets, format): equal
    /// digests give equal images.
    pub inputs_digest: String,
    /// Fingerprint of the node's SSH host key (public).
    pub host_key: Option<String>,
    /// The image's MBR disk identifier (`PARTUUID=` names `ID-01`, `ID-02`).
    #[serde(default)]
    pub disk_id: String,
    /// How the image was written (the route), or `unchanged` when this run left it alone.
    pub written: serde_json::Value,
}

/// Check every node's recipe against its role, as a build would, before anything is made.
pub fn validate_nodes(
    inv: &Inventory,
    text: &str,
    roles: &[PathBuf],
    overlays: &[PathBuf],
) -> anyhow::Result<()> {
    for node in inv.nodes() {
        let layers = Layers::resolve(&node.role, roles, overlays)?;
        inv.recipe(node, text, None).validate(&layers)?;
    }
    Ok(())
}

/// Read and check the inventory: the parsed inventory and its text.
pub fn load_inventory(path: &Path, roles: &[PathBuf]) -> anyhow::Result<(Inventory, String)> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeReadError {
        path: path.to_path_buf(),
        source,
    })?;
    let layers = Layers::resolve("master", roles, &[])?;
    let inv = inventory::parse(
        &path.display().to_string(),
        &text,
        &super::lan_defaults(&layers),
    )?;
    Ok((inv, text))
}

/// Where the images of the inventory at `path` go by default: `STEM.images` beside it.
pub fn default_images_dir(path: &Path) -> PathBuf {
    beside(path, "images")
}

/// Where the secrets of the inventory at `path` live by default: `STEM.secrets` beside it.
pub fn default_secrets_dir(path: &Path) -> PathBuf {
    beside(path, "secrets")
}

/// `STEM.what` beside the file at `path`.
fn beside(path: &Path, what: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cluster".into());
    path.with_file_name(format!("{stem}.{what}"))
}

/// Build every node; returns the cluster manifest (also written to `DIR/cluster.manifest.json`).
pub fn build(req: &Request, progress: &dyn Progress) -> anyhow::Result<ClusterManifest> {
    let roles = &req.options.roles;
    let (inv, text) = load_inventory(&req.inventory, roles)?;
    let format = req
        .format
        .clone()
        .or_else(|| inv.format.clone())
        .unwrap_or_else(|| "img.xz".into());
    let format = format.trim_start_matches('.').to_string();
    let out_dir = &req.out_dir;

    // Every recipe is checked before anything is generated, opened or written.
    let mut opts = req.options.clone();
    opts.recipe = req.inventory.clone();
    validate_nodes(&inv, &text, roles, &opts.overlays)?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    // Two builds into one directory would each keep or skip nodes from a manifest the other
    // is about to replace: the second waits for the first, then sees what it wrote.
    let _lock = lock_dir(out_dir, progress)?;
    let previous = ClusterManifest::read(&manifest_path(out_dir));
    let secrets_dir = req
        .secrets
        .clone()
        .unwrap_or_else(|| default_secrets_dir(&req.inventory));
    let secrets = Secrets::open(&secrets_dir)?;
    let trust = Trust::load(&secrets, &inv)?;
    let docs: Vec<_> = inv
        .nodes()
        .map(|n| inv.recipe(n, &text, Some(&trust)))
        .collect();

    // One epoch for the whole cluster; without one given, the last build's, so a rebuild
    // that adds a node leaves the others as they were.
    let master_layers = Layers::resolve("master", roles, &opts.overlays)?;
    let recipe_epoch = docs[0].validate(&master_layers)?.epoch();
    let (epoch, epoch_source) = match (opts.epoch, recipe_epoch, bake::source_date_epoch()?) {
        (Some(e), _, _) => (e, "--epoch".to_string()),
        (None, Some(e), _) => (e, "inventory [build] epoch".into()),
        (None, None, Some(e)) => (e, "SOURCE_DATE_EPOCH".into()),
        _ => match &previous {
            Some(m) => (m.epoch, format!("the previous build ({})", m.epoch_source)),
            None => (bake::now_secs(), "the time of the first build".into()),
        },
    };
    opts.epoch = Some(epoch);
    let out_format = crate::output::Format::from_path(Path::new(&format!("x.{format}")))?;
    opts.decode_first = out_format == crate::output::Format::Raw;

    let base = bake::open_base(&opts, inv.base.as_deref(), progress)?;
    let mut records = Vec::new();
    let bmap_hashes = std::sync::Arc::new(crate::output::bmap::BaseHashes::default());
    // Every node is built over this one base, so they share what each compressed and decoded.
    let xz_pieces = std::sync::Arc::new(crate::output::xz_patch::Pieces::default());
    for (node, doc) in inv.nodes().zip(docs) {
        let fork = base
            .fork()
            .ok_or_else(|| anyhow::anyhow!("the base cannot be shared between nodes"))?;
        // `--stack` names one of the master's stacks; the other roles choose their own.
        let stack = if node.role == "master" {
            opts.stack.clone()
        } else {
            "auto".to_string()
        };
        let node_opts = Options {
            document: Some(doc),
            stack,
            ..opts.clone()
        };
        let mut p = bake::prepare_on(&node_opts, fork, progress)
            .with_context(|| format!("node {}", node.hostname))?;
        let out = out_dir.join(format!("{}.{format}", node.hostname));
        let digest = inputs_digest(&p, &format, req.bmap)?;
        let key = trust.hosts.get(&node.hostname).map(|k| k.fingerprint());
        let old = previous
            .as_ref()
            .and_then(|m| m.nodes.iter().find(|r| r.hostname == node.hostname));
        if !req.force
            && let Some(old) = old.filter(|o| o.inputs_digest == digest && untouched(o, &out))
        {
            let mut kept = old.clone();
            kept.written = "unchanged".into();
            records.push(kept);
            continue;
        }
        let extras = Extras {
            bmap: req.bmap,
            imager: None,
            bmap_hashes: Some(bmap_hashes.clone()),
            xz_pieces: Some(xz_pieces.clone()),
        };
        let built = bake::build(&mut p, &out, &extras, progress)
            .with_context(|| format!("node {}", node.hostname))?;
        let disk_id = match &p.plan.disk_id {
            Some(change) => change.to.clone(),
            None => p.plan.facts.disk_id.clone(),
        };
        records.push(record(node, &built, digest, key, disk_id)?);
    }
    let manifest = ClusterManifest {
        pibake: env!("CARGO_PKG_VERSION").to_string(),
        inventory: req.inventory.clone(),
        inventory_sha256: crate::acquire::cache::hash_file(&req.inventory, &mut |_| {})?,
        name: inv.name.clone(),
        domain: inv.domain.clone(),
        base: base.path.clone(),
        base_sha256: base.sha256.clone(),
        epoch,
        epoch_source,
        format,
        secrets: secrets_dir,
        nodes: records,
    };
    manifest.write(&manifest_path(out_dir))?;
    Ok(manifest)
}

/// Hold `dir/.pibake-cluster.lock` exclusively, saying so while another build holds it. The
/// kernel drops the lock when its holder exits, killed or not.
fn lock_dir(dir: &Path, progress: &dyn Progress) -> anyhow::Result<std::fs::File> {
    let path = dir.join(".pibake-cluster.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let waiting = format!(
        "waiting for another cluster build into {} to finish",
        dir.display()
    );
    crate::acquire::cache::lock_waiting(
        &file,
        crate::acquire::cache::LockMode::Exclusive,
        &waiting,
        progress,
    )
    .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// Where the cluster manifest of images directory `dir` is.
pub(super) fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("cluster.manifest.json")
}

fn record(
    node: &Node,
    built: &bake::Built,
    inputs_digest: String,
    host_key: Option<String>,
    disk_id: String,
) -> anyhow::Result<NodeRecord> {
    let path = &built.output.path;
    Ok(NodeRecord {
        hostname: node.hostname.clone(),
        role: node.role.clone(),
        address: node.address.to_string(),
        mac: node.mac.clone(),
        image: path.clone(),
        bytes: built.output.bytes,
        sha256: built.output.sha256.clone(),
        mtime_ns: mtime_ns(path).unwrap_or(0),
        bmap: built.bmap.as_ref().map(|b| b.path.clone()),
        manifest: built.manifest.clone(),
        inputs_digest,
        host_key,
        disk_id,
        written: serde_json::to_value(&built.route)?,
    })
}

/// Everything the image is a function of: pibake's version, the base, the output format and
/// the full plan (secrets included: they are file contents too). Only the digest is recorded.
fn inputs_digest(p: &bake::Prepared, format: &str, bmap: bool) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([0]);
    h.update(p.base_sha256.as_bytes());
    h.update([0]);
    h.update(format.as_bytes());
    h.update([u8::from(bmap)]);
    h.update(serde_json::to_vec(&p.plan)?);
    Ok(hex::encode(h.finalize()))
}

/// The output the record describes is still there as written: same length, same mtime.
fn untouched(r: &NodeRecord, out: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(out) else {
        return false;
    };
    r.image == out
        && meta.len() == r.bytes
        && mtime_ns(out) == Some(r.mtime_ns)
        && r.bmap.as_ref().is_none_or(|b| b.exists())
        && r.manifest.exists()
}

pub(super) fn mtime_ns(path: &Path) -> Option<u128> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos())
}

impl ClusterManifest {
    /// The manifest at `path`, if there is a readable one.
    pub fn read(path: &Path) -> Option<ClusterManifest> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Write it atomically.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        bake::manifest::write_whole(path, &serde_json::to_vec_pretty(self)?)
    }
}
