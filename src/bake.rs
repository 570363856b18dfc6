//! The whole job: open the base, read its facts, plan, apply, write the output and its manifest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use crate::acquire::cache::{self, Cache, ImageMeta};
use crate::acquire::{AcquireError, AcquireOptions};
use crate::disk::Image;
use crate::disk::image::Access;
use crate::facts::{self, Facts};
use crate::fs::ext4::Ext4;
use crate::fs::fat::Fat;
use crate::output::{Format, Written};
use crate::overlay::Layers;
use crate::plan::{self, Plan};
use crate::progress::Progress;
use crate::recipe::{self, Validated};

/// What a build or plan needs to know beyond the recipe.
#[derive(Debug, Clone)]
pub struct Options {
    /// The recipe file.
    pub recipe: PathBuf,
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

fn epoch(opts: &Options, v: &Validated) -> anyhow::Result<(i64, String)> {
    if let Some(e) = opts.epoch {
        return Ok((e, "--epoch".into()));
    }
    if let Some(e) = v.epoch() {
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
    let doc = recipe::load(&opts.recipe)?;
    let layers = Layers::resolve(&doc.role()?, &opts.roles, &opts.overlays)?;
    let v = doc.validate(&layers)?;
    let base_name = opts
        .base
        .clone()
        .or_else(|| v.base().map(str::to_string))
        .ok_or(NoBase)?;
    let mut base = resolve_base(&base_name, &opts.recipe);
    let cache = Cache::open(&opts.acquire.cache_dir)?;
    let (epoch, epoch_source) = epoch(opts, &v)?;
    let local = base.exists();
    if !local {
        // Not a local file: an OS-list name or a URL, fetched and verified into the cache; a
        // multi-block .xz stays compressed (read in place), anything else is decoded.
        let remote = AcquireOptions {
            prefer_compressed: true,
            ..opts.acquire.clone()
        };
        base = crate::acquire::resolve(&base_name, &remote, progress)?.image;
    }
    let base_sha256 = cache.hash_local(&base, progress)?;
    if let Some(given) = &opts.acquire.sha256 {
        // A URL or OS-list download was checked on the way in; a local file is checked here.
        let wanted =
            crate::acquire::normalize_sha256(given).ok_or_else(|| AcquireError::BadSha256 {
                what: "--sha256".into(),
                value: given.clone(),
            })?;
        if local && wanted != base_sha256 {
            return Err(AcquireError::LocalChecksumMismatch {
                path: base.clone(),
                expected: wanted,
                actual: base_sha256,
            }
            .into());
        }
    }
    let (_, access) = Image::probe(&base)?;
    let mut decoded_copy = None;
    let mut decoded_now = false;
    if opts.trust_cache && matches!(access, Access::XzBlocks { .. }) {
        decoded_copy = match cache.find_image(&base_sha256) {
            Some((copy, _)) => Some(copy),
            None if opts.decode_first => {
                let xz = crate::disk::XzDev::open(&base, 0)
                    .with_context(|| format!("opening {}", base.display()))?;
                decoded_now = true;
                Some(decode_into_cache(
                    &cache,
                    &xz,
                    &base,
                    &base_sha256,
                    progress,
                )?)
            }
            None => None,
        };
    }
    let image = match &decoded_copy {
        Some(copy) => Image::open_with_decoded_copy(&base, copy)?,
        None => open_local(&base, &cache, &opts.acquire, progress)?,
    };
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
    let plan = plan::make(&v, &facts, &layers, &opts.stack, epoch)?;
    Ok(Prepared {
        recipe: v,
        base,
        base_sha256,
        cache,
        decoded_copy,
        decoded_now,
        trust_cache: opts.trust_cache,
        image,
        root,
        boot,
        facts,
        plan,
        epoch_source,
        recipe_path: opts.recipe.clone(),
        overlay_dirs: opts.overlays.clone(),
        role_dirs: opts.roles.clone(),
    })
}

/// Open a local base: raw and multi-block `.xz` files in place; anything that can only be read
/// from the start (gzip, zstd, zip, a single-block `.xz`) decoded once into the cache.
fn open_local(
    path: &Path,
    cache: &Cache,
    acquire: &AcquireOptions,
    progress: &dyn Progress,
) -> anyhow::Result<Image> {
    let (compression, access) = Image::probe(path)?;
    let Access::Decoded { reason } = access else {
        return Ok(Image::open(path)?);
    };
    let local = crate::acquire::AcquireOptions {
        cache_dir: cache.root().to_path_buf(),
        ..acquire.clone()
    };
    let acquired = crate::acquire::resolve(&path.display().to_string(), &local, progress)?;
    Ok(Image::open_decoded(
        path,
        &acquired.image,
        compression,
        format!("{reason}; the decoded image is kept in the cache"),
        None,
    )?)
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
    /// How it was produced from the base.
    pub route: Route,
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
    let (report, mut output, route) = apply_and_write(p, out, progress)?;
    if output.raw_sha256.is_none() && extras.imager.is_some() {
        // Imager checks the extracted image's SHA-256: the one thing the patch route skipped.
        output.raw_sha256 = Some(raw_sha256(p, progress)?);
    }
    let mut outputs = vec![json!({
        "path": output.path,
        "format": output.format,
        "bytes": output.bytes,
        "sha256": output.sha256,
        "raw_bytes": output.raw_bytes,
        "raw_sha256": output.raw_sha256,
        "route": route,
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
    let manifest = json!({
        "pibake": env!("CARGO_PKG_VERSION"),
        "inputs": {
            "base": {
                "path": p.base,
                "sha256": p.base_sha256,
                "compression": p.image.compression,
                "access": p.image.access,
                "xz_blocks_decoded": p.image.xz.as_ref().map(|x| x.blocks_decoded()),
            },
            "recipe": {
                "path": p.recipe_path,
                "sha256": sha256_file(&p.recipe_path)?,
                "content": p.recipe.redacted(),
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
    let mut manifest = manifest;
    if !p.role_dirs.is_empty() {
        // Only when used, so manifests of builds with built-in roles stay as they were.
        manifest["inputs"]["roles"] = json!(p.role_dirs);
    }
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
        route,
        bmap,
        imager,
        manifest: manifest_path,
        changed: report.iter().filter(|c| **c).count(),
        total: report.len(),
    })
}

/// The Imager entry's words: what the user gave, else defaults from the recipe and the base.
fn imager_info(p: &Prepared, req: &ImagerRequest) -> crate::output::imager::EntryInfo {
    let hostname = p.recipe.str("node", "hostname").unwrap_or("node");
    let role = p.recipe.role.as_str();
    let os = &p.facts.os;
    crate::output::imager::EntryInfo {
        name: req
            .name
            .clone()
            .unwrap_or_else(|| format!("{hostname} ({role})")),
        description: req.description.clone().unwrap_or_else(|| {
            format!(
                "Cluster {} baked by pibake from {}",
                role,
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

/// How the output was produced from the base: the manifest records it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Route {
    /// Every byte of the image was read from the base (plus changes) and written by the
    /// output's encoder.
    Full,
    /// `.img.xz` from an `.img.xz` base: untouched xz blocks copied as they are, touched ones
    /// re-encoded.
    XzPatch {
        /// Blocks in the output.
        blocks: usize,
        /// Blocks re-encoded because the build changed them.
        reencoded: usize,
        /// Compressed bytes copied verbatim from the base: whole blocks, and LZMA2 chunks kept
        /// inside re-encoded ones.
        copied_bytes: u64,
        /// Decoded bytes that went through the compressor again.
        compressed_again: u64,
        /// Re-encoded blocks compressed whole, because their chunks could not be spliced.
        whole: usize,
    },
    /// Raw output from an `.img.xz` base whose decoded copy was not cached: every block decoded
    /// once in parallel, the changes laid over it; the decoded base is now cached.
    XzDecode {
        /// Whether the decoded base entered the cache.
        cached: bool,
    },
    /// Raw output cloned from the cached decoded base, then only the changed blocks written.
    CachedCopy {
        /// How the copy was made.
        method: crate::output::clone::CloneMethod,
        /// True when the result's SHA-256 was already known for this base and these changes.
        hash_reused: bool,
    },
}

impl Route {
    /// A few words for the build summary.
    pub fn describe(&self) -> String {
        match self {
            Route::Full => "every block encoded".into(),
            Route::XzPatch {
                blocks,
                reencoded,
                compressed_again,
                ..
            } => format!(
                "{} of {blocks} xz blocks copied verbatim, {reencoded} spliced \
                 ({:.1} MiB compressed again)",
                blocks - reencoded,
                *compressed_again as f64 / 1048576.0
            ),
            Route::XzDecode { cached: true } => {
                "base decoded once (kept in the cache for the next build)".into()
            }
            Route::XzDecode { cached: false } => "base decoded once".into(),
            Route::CachedCopy {
                method,
                hash_reused,
            } => format!(
                "copied from the cached decoded base ({}){}",
                match method {
                    crate::output::clone::CloneMethod::Reflink => "reflink",
                    crate::output::clone::CloneMethod::KernelCopy => "in-kernel copy",
                    crate::output::clone::CloneMethod::ReadWrite => "read and write",
                },
                if *hash_reused { ", hash known" } else { "" }
            ),
        }
    }
}

/// Apply the plan into the copy-on-write layer and write the result to `out` by the cheapest
/// route the base and the output format allow.
fn apply_and_write(
    p: &mut Prepared,
    out: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<(crate::apply::Report, Written, Route)> {
    let format = Format::from_path(out)?;
    let xz = match (&p.image.xz, format) {
        (Some(xz), Format::Xz | Format::Raw) => xz.clone(),
        _ => {
            let report = crate::apply::apply(&p.plan, &mut p.root, &mut p.boot)?;
            let written = crate::output::write(&p.image.disk, out, progress)?;
            return Ok((report, written, Route::Full));
        }
    };
    if format == Format::Xz {
        let report = crate::apply::apply(&p.plan, &mut p.root, &mut p.boot)?;
        let threads = crate::output::threads() as usize;
        let w = crate::output::xz_patch::write_patched(&xz, &p.image.disk, out, threads, progress)?;
        let route = Route::XzPatch {
            blocks: w.blocks,
            reencoded: w.reencoded,
            copied_bytes: w.copied_bytes,
            compressed_again: w.compressed_again,
            whole: w.whole,
        };
        let written = Written {
            path: w.path,
            format: Format::Xz,
            bytes: w.bytes,
            sha256: w.sha256,
            raw_bytes: w.raw_bytes,
            raw_sha256: None,
        };
        return Ok((report, written, route));
    }
    if !p.trust_cache {
        // One pass over the base, trusting nothing: every block decoded and checked, the
        // changes laid over it, the result hashed.
        let report = crate::apply::apply(&p.plan, &mut p.root, &mut p.boot)?;
        let written = crate::output::raw::write_from_xz(&xz, &p.image.disk, out, progress)?;
        return Ok((report, written, Route::XzDecode { cached: false }));
    }
    let (copy, fresh) = match &p.decoded_copy {
        Some(copy) => (copy.clone(), p.decoded_now),
        None => {
            // Decode the base once into the cache; the edits then read the copy, not the blocks.
            let copy = decode_into_cache(&p.cache, &xz, &p.base, &p.base_sha256, progress)?;
            p.image.use_decoded_copy(&copy)?;
            p.decoded_copy = Some(copy.clone());
            (copy, true)
        }
    };
    let report = crate::apply::apply(&p.plan, &mut p.root, &mut p.boot)?;
    let disk = &p.image.disk;
    let derived = cache::derived_key(&p.base_sha256, &disk.changes_digest());
    let known = p.cache.find_derived(&derived);
    let (written, method) =
        crate::output::raw::write_from_copy(&copy, disk, out, known.as_deref(), progress)?;
    if let (None, Some(sha)) = (&known, &written.raw_sha256) {
        // Only saves the next identical build a hash: failing to record it is harmless.
        let _ = p.cache.record_derived(&derived, sha);
    }
    let route = if fresh {
        Route::XzDecode { cached: true }
    } else {
        Route::CachedCopy {
            method,
            hash_reused: known.is_some(),
        }
    };
    Ok((report, written, route))
}

/// Decode the `.xz` base into the cache (every block, in parallel) and return the copy's path.
fn decode_into_cache(
    cache: &Cache,
    xz: &crate::disk::XzDev,
    base: &Path,
    base_sha256: &str,
    progress: &dyn Progress,
) -> anyhow::Result<PathBuf> {
    let tmp = cache.temp_image()?;
    crate::output::raw::decode_xz_to(xz, tmp.as_file(), progress).map_err(|e| match e {
        Ok(read) => anyhow::Error::from(read).context(format!("decoding {}", base.display())),
        Err(write) => anyhow::Error::from(write).context("writing the decoded base to the cache"),
    })?;
    // Waiting here for 1.9 GB to reach the disk would cost a cold build seconds; where the boot
    // can be told apart, the entry records it instead and is synced when first used again.
    let unsynced_boot = cache::boot_id();
    if unsynced_boot.is_none() {
        tmp.as_file()
            .sync_all()
            .context("writing the decoded base to the cache")?;
    }
    let meta = ImageMeta {
        key: base_sha256.to_string(),
        // Not hashed: the copy is trusted because it is the decode of a file whose own SHA-256
        // is the key; an empty hash is "unknown" to every reader of the cache.
        image_sha256: String::new(),
        size: crate::disk::BlockDev::len(xz),
        compression: "xz".into(),
        origin: base.display().to_string(),
        verification: crate::acquire::Verification::local_unchecked(base_sha256),
        created: cache::now_secs(),
        unsynced_boot,
    };
    Ok(cache.commit_image(tmp, &meta)?)
}

/// SHA-256 of the built raw image, read through the copy-on-write layer (decoding an `.xz`
/// base's blocks in parallel).
fn raw_sha256(p: &Prepared, progress: &dyn Progress) -> anyhow::Result<String> {
    crate::output::stream_disk(
        &p.image.disk,
        &mut std::io::sink(),
        "hashing image",
        progress,
    )
    .map_err(|e| match e {
        Ok(e) | Err(e) => anyhow::Error::from(e),
    })
}

/// SHA-256 of a file, hex, read in full every time (no memo: `verify` relies on that).
fn sha256_file(path: &Path) -> std::io::Result<String> {
    cache::hash_file(path, &mut |_| {})
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
    // The stack the build used, checked by planning like any --stack; "none" is what overlays
    // without stacks record, and only `auto` gives it.
    let stack = match s(&inputs["stack"], "inputs.stack")?.as_str() {
        "none" => "auto".to_string(),
        name => name.to_string(),
    };
    let paths = |key: &str| -> Vec<PathBuf> {
        inputs[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(PathBuf::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let overlays = paths("overlays");
    let roles = paths("roles");
    let epoch = inputs["epoch"]
        .as_i64()
        .ok_or_else(|| bad("inputs.epoch"))?;
    // The raw image is what is compared, whatever format the build wrote; a patched .img.xz
    // (no raw hash recorded) is rebuilt the same way and compared as a file.
    let by_raw = !m["outputs"][0]["raw_sha256"].is_null();
    let expected = if by_raw {
        s(&m["outputs"][0]["raw_sha256"], "outputs[0].raw_sha256")?
    } else {
        s(&m["outputs"][0]["sha256"], "outputs[0].sha256")?
    };
    let out_path = PathBuf::from(s(&m["outputs"][0]["path"], "outputs[0].path")?);
    let opts = Options {
        recipe,
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
    let (_, written, _) = apply_and_write(&mut p, tmp.path(), progress)?;
    let actual = if by_raw {
        written.raw_sha256.unwrap_or_default()
    } else {
        written.sha256
    };
    Ok(Verified { expected, actual })
}
