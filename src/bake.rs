//! The whole job: open the base, read its facts, plan, apply, write the output and its manifest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use crate::disk::Image;
use crate::facts::{self, Facts};
use crate::fs::ext4::Ext4;
use crate::fs::fat::Fat;
use crate::overlay::Overlay;
use crate::plan::{self, Plan, StackChoice};
use crate::progress::Progress;
use crate::recipe::{self, Validated};

/// What a build or plan needs to know beyond the recipe.
#[derive(Debug, Clone)]
pub struct Options {
    /// The recipe file.
    pub recipe: PathBuf,
    /// Base image overriding the recipe's `[image] base`.
    pub base: Option<String>,
    /// `--stack`.
    pub stack: StackChoice,
    /// Extra overlay directories, applied after the role's.
    pub overlays: Vec<PathBuf>,
    /// Timestamp for everything written; `None` = recipe, then `SOURCE_DATE_EPOCH`, then now.
    pub epoch: Option<i64>,
}

/// Inputs resolved and opened, ready to plan against.
pub struct Prepared {
    /// The validated recipe.
    pub recipe: Validated,
    /// The base image path.
    pub base: PathBuf,
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
}

/// No base image named anywhere.
#[derive(Debug, thiserror::Error)]
#[error("no base image: give --base IMAGE or set `base` under [image] in the recipe")]
pub struct NoBase;

fn epoch(opts: &Options, v: &Validated) -> anyhow::Result<(i64, String)> {
    if let Some(e) = opts.epoch {
        return Ok((e, "--epoch".into()));
    }
    if let Some(e) = v.recipe.build.epoch {
        return Ok((e, "recipe [build] epoch".into()));
    }
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        let e = s.trim().parse::<i64>().map_err(|_| {
            crate::cli::BadInput(format!(
                "SOURCE_DATE_EPOCH={s:?} is not a number of seconds"
            ))
        })?;
        return Ok((e, "SOURCE_DATE_EPOCH".into()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok((
        now,
        "the current time (set SOURCE_DATE_EPOCH for reproducible builds)".into(),
    ))
}

/// Read the recipe, open the base, read facts and make the plan. Nothing is written.
pub fn prepare(opts: &Options, progress: &dyn Progress) -> anyhow::Result<Prepared> {
    let v = recipe::load(&opts.recipe)?;
    let base_name = opts
        .base
        .clone()
        .or_else(|| v.recipe.image.base.clone())
        .ok_or(NoBase)?;
    let mut base = resolve_base(&base_name, &opts.recipe);
    if !base.exists() {
        // Not a local file: an OS-list name or a URL, fetched, verified and cached.
        let acquired = crate::acquire::resolve(
            &base_name,
            &crate::acquire::AcquireOptions::default(),
            progress,
        )?;
        base = acquired.image;
    }
    let (epoch, epoch_source) = epoch(opts, &v)?;
    let mut started = false;
    let image = Image::open_with_progress(&base, &mut |done| {
        if !started {
            progress.begin("decoding base", None);
            started = true;
        }
        progress.set(done);
    })?;
    if started {
        progress.end();
    }
    let root_part = image.root()?.clone();
    let boot_part = image.boot()?.clone();
    let mut root = Ext4::open(
        image.region(&root_part, true).context("root partition")?,
        epoch,
    )?;
    let mut boot = Fat::open(
        image.region(&boot_part, true).context("boot partition")?,
        epoch,
    )?;
    let facts = facts::gather(&mut root, &mut boot)?;
    let mut overlays = vec![Overlay::built_in(v.recipe.node.role.get_ref())?];
    for dir in &opts.overlays {
        overlays.push(Overlay::from_dir(dir)?);
    }
    let plan = plan::make(&v, &facts, &overlays, opts.stack, epoch, &mut root)?;
    Ok(Prepared {
        recipe: v,
        base,
        image,
        root,
        boot,
        facts,
        plan,
        epoch_source,
        recipe_path: opts.recipe.clone(),
        overlay_dirs: opts.overlays.clone(),
    })
}

/// A relative base path in the recipe is relative to the recipe's directory.
fn resolve_base(name: &str, recipe: &Path) -> PathBuf {
    let p = PathBuf::from(name);
    if p.is_absolute() || p.exists() {
        return p;
    }
    match recipe.parent() {
        Some(dir) if dir.join(&p).exists() => dir.join(p),
        _ => p,
    }
}

/// What `build` writes besides the image itself.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Also write `OUT.bmap` (bmaptool format 2.0).
    pub bmap: bool,
    /// Also write a Raspberry Pi Imager repository file with one entry for the image.
    pub imager: Option<ImagerRequest>,
}

/// `--imager-json` and the fields of its entry.
#[derive(Debug, Clone, Default)]
pub struct ImagerRequest {
    /// Where to write the repository JSON.
    pub path: PathBuf,
    /// Entry name; default from the recipe's hostname and role.
    pub name: Option<String>,
    /// Entry description; default names the base release.
    pub description: Option<String>,
    /// Download URL; default: the output's file name, relative to the JSON.
    pub url: Option<String>,
    /// Imager's `init_format`.
    pub init_format: String,
}

/// What `build` produced.
#[derive(Debug)]
pub struct Built {
    /// The image written.
    pub output: crate::output::Written,
    /// The block map, when asked for.
    pub bmap: Option<crate::output::bmap::BmapWritten>,
    /// The Imager repository file, when asked for.
    pub imager: Option<PathBuf>,
    /// The manifest written beside it.
    pub manifest: PathBuf,
    /// Operations that changed something.
    pub changed: usize,
    /// All operations.
    pub total: usize,
}

/// Apply the plan and write `out` plus `out.manifest.json`, and the extras asked for.
/// `p` stays usable afterwards (its image is the built one), e.g. to flash it.
pub fn build(
    p: &mut Prepared,
    out: &Path,
    extras: &Extras,
    progress: &dyn Progress,
) -> anyhow::Result<Built> {
    let (report, output) = apply_and_write(p, out, progress)?;
    let mut outputs = vec![json!({
        "path": output.path,
        "format": output.format,
        "bytes": output.bytes,
        "sha256": output.sha256,
        "raw_bytes": output.raw_bytes,
        "raw_sha256": output.raw_sha256,
    })];
    let bmap = if extras.bmap {
        let ranges = crate::output::bmap::mapped_ranges(&p.image)?;
        let dest = PathBuf::from(format!("{}.bmap", out.display()));
        let b = crate::output::bmap::write(&p.image.disk, &ranges, &dest, progress)?;
        outputs.push(json!({
            "path": b.path, "format": "bmap", "bytes": b.bytes, "sha256": b.sha256,
            "blocks": b.blocks, "mapped_blocks": b.mapped_blocks,
        }));
        Some(b)
    } else {
        None
    };
    let imager = match &extras.imager {
        Some(req) => {
            let entry = crate::output::imager::entry(&imager_info(p, req), &output);
            crate::output::imager::write(&req.path, vec![entry])?;
            outputs.push(json!({
                "path": req.path, "format": "imager-json",
                "sha256": sha256_file(&req.path)?,
            }));
            Some(req.path.clone())
        }
        None => None,
    };
    let base_sha = sha256_file(&p.base).with_context(|| format!("hashing {}", p.base.display()))?;
    let manifest = json!({
        "pibake": env!("CARGO_PKG_VERSION"),
        "inputs": {
            "base": { "path": p.base, "sha256": base_sha, "compression": p.image.compression },
            "recipe": {
                "path": p.recipe_path,
                "sha256": sha256_file(&p.recipe_path)?,
                "content": recipe::redacted(&p.recipe.recipe),
            },
            "overlays": p.overlay_dirs,
            "stack": p.plan.stack,
            "epoch": p.plan.epoch,
            "epoch_source": p.epoch_source,
        },
        "plan": p.plan.redacted_json(),
        "changed_operations": report.iter().filter(|c| **c).count(),
        "outputs": outputs,
    });
    let manifest_path = PathBuf::from(format!("{}.manifest.json", out.display()));
    let text = serde_json::to_string_pretty(&manifest)?;
    let tmp = tempfile::NamedTempFile::new_in(
        manifest_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    std::fs::write(tmp.path(), text + "\n")?;
    tmp.persist(&manifest_path).map_err(|e| e.error)?;
    Ok(Built {
        output,
        bmap,
        imager,
        manifest: manifest_path,
        changed: report.iter().filter(|c| **c).count(),
        total: report.len(),
    })
}

/// The Imager entry's words: what the user gave, else defaults from the recipe and the base.
fn imager_info(p: &Prepared, req: &ImagerRequest) -> crate::output::imager::EntryInfo {
    let node = &p.recipe.recipe.node;
    let os = &p.facts.os;
    crate::output::imager::EntryInfo {
        name: req
            .name
            .clone()
            .unwrap_or_else(|| format!("{} ({})", node.hostname.get_ref(), node.role.get_ref())),
        description: req.description.clone().unwrap_or_else(|| {
            format!(
                "Cluster {} baked by pibake from {}",
                node.role.get_ref(),
                if os.pretty_name.is_empty() {
                    "Raspberry Pi OS"
                } else {
                    &os.pretty_name
                }
            )
        }),
        url: req.url.clone(),
        icon: None,
        init_format: req.init_format.clone(),
        epoch: p.plan.epoch,
        devices: Vec::new(),
    }
}

/// Apply the plan into the copy-on-write layer and write the result to `out`.
fn apply_and_write(
    p: &mut Prepared,
    out: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<(crate::apply::Report, crate::output::Written)> {
    let report = crate::apply::apply(&p.plan, &mut p.root, &mut p.boot)?;
    let written = crate::output::write(&p.image.disk, out, progress)?;
    Ok((report, written))
}

/// SHA-256 of a file, hex, streamed.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

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

/// The outcome of `verify`.
#[derive(Debug)]
pub struct Verified {
    /// sha256 the manifest recorded for the output.
    pub expected: String,
    /// sha256 of the rebuild.
    pub actual: String,
}

/// Rebuild what `manifest` describes and compare the result's sha256 with the one recorded.
pub fn verify(manifest: &Path, progress: &dyn Progress) -> anyhow::Result<Verified> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let bad = |what: &str| VerifyError::BadManifest {
        path: manifest.to_path_buf(),
        what: what.to_string(),
    };
    let m: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let s =
        |v: &serde_json::Value, what: &str| v.as_str().map(str::to_string).ok_or_else(|| bad(what));
    let inputs = &m["inputs"];
    let base = PathBuf::from(s(&inputs["base"]["path"], "inputs.base.path")?);
    let recipe = PathBuf::from(s(&inputs["recipe"]["path"], "inputs.recipe.path")?);
    for (what, path, recorded) in [
        ("the base image", &base, &inputs["base"]["sha256"]),
        ("the recipe", &recipe, &inputs["recipe"]["sha256"]),
    ] {
        let expected = s(recorded, "input sha256")?;
        let actual =
            sha256_file(path).with_context(|| format!("reading {what} {}", path.display()))?;
        if actual != expected {
            return Err(VerifyError::InputChanged {
                what: format!("{what} {}", path.display()),
                expected,
                actual,
            }
            .into());
        }
    }
    let stack = match s(&inputs["stack"], "inputs.stack")?.as_str() {
        "classic" => StackChoice::Classic,
        "modern" => StackChoice::Modern,
        _ => StackChoice::Auto,
    };
    let overlays = inputs["overlays"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(PathBuf::from))
                .collect()
        })
        .unwrap_or_default();
    let epoch = inputs["epoch"]
        .as_i64()
        .ok_or_else(|| bad("inputs.epoch"))?;
    // The raw image is what is compared, whatever format the build wrote.
    let expected = s(&m["outputs"][0]["raw_sha256"], "outputs[0].raw_sha256")?;
    let out_path = PathBuf::from(s(&m["outputs"][0]["path"], "outputs[0].path")?);
    let opts = Options {
        recipe,
        base: Some(base.display().to_string()),
        stack,
        overlays,
        epoch: Some(epoch),
    };
    let prepared = prepare(&opts, progress)?;
    // Rebuild beside the original so the comparison never depends on a temp filesystem's space.
    let dir = out_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".pibake-verify-")
        .suffix(".img")
        .tempfile_in(dir)?;
    let mut p = prepared;
    let (_, written) = apply_and_write(&mut p, tmp.path(), progress)?;
    Ok(Verified {
        expected,
        actual: written.raw_sha256,
    })
}
