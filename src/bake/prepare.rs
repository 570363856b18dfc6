//! `prepare`: read the recipe and its role's overlays, find and open the base (fetching,
//! checking and decoding it as needed), read its facts and make the plan. Nothing is written
//! except, where a build will need it anyway, a decoded copy of the base into the cache.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{BadEpoch, Base, NoBase, Options, Prepared};
use crate::acquire::cache::{self, Cache, ImageMeta};
use crate::acquire::{AcquireError, AcquireOptions};
use crate::disk::Image;
use crate::disk::image::Access;
use crate::facts;
use crate::fs::ext4::Ext4;
use crate::fs::fat::Fat;
use crate::overlay::Layers;
use crate::plan;
use crate::progress::Progress;
use crate::recipe::{self, Validated};

fn epoch(opts: &Options, v: &Validated) -> anyhow::Result<(i64, String)> {
    if let Some(e) = opts.epoch {
        return Ok((e, "--epoch".into()));
    }
    if let Some(e) = v.epoch() {
        return Ok((e, "recipe [build] epoch".into()));
    }
    if let Some(e) = source_date_epoch()? {
        return Ok((e, "SOURCE_DATE_EPOCH".into()));
    }
    Ok((
        now_secs(),
        "the current time (set SOURCE_DATE_EPOCH for reproducible builds)".into(),
    ))
}

/// `SOURCE_DATE_EPOCH`, when set; refused when it is not a number of seconds.
pub fn source_date_epoch() -> Result<Option<i64>, BadEpoch> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s.trim().parse::<i64>().map(Some).map_err(|_| BadEpoch(s)),
        Err(_) => Ok(None),
    }
}

/// Seconds since 1970, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The recipe of a build: `opts.document` when the caller made it, else the file, validated
/// against its role's overlays.
fn load(opts: &Options) -> anyhow::Result<(Validated, Layers)> {
    let doc = match &opts.document {
        Some(doc) => doc.clone(),
        None => recipe::load(&opts.recipe)?,
    };
    let layers = Layers::resolve(&doc.role()?, &opts.roles, &opts.overlays)?;
    let v = doc.validate(&layers)?;
    Ok((v, layers))
}

/// Read the recipe, open the base, read facts and make the plan. Nothing is written.
pub fn prepare(opts: &Options, progress: &dyn Progress) -> anyhow::Result<Prepared> {
    let (v, layers) = load(opts)?;
    let base = open_base(opts, v.base(), progress)?;
    finish(opts, v, &layers, base)
}

/// Plan a build on a base already opened (by [`open_base`], or a [`Base::fork`] of one).
pub fn prepare_on(
    opts: &Options,
    base: Base,
    _progress: &dyn Progress,
) -> anyhow::Result<Prepared> {
    let (v, layers) = load(opts)?;
    finish(opts, v, &layers, base)
}

/// Find and open the base named by `--base`, else by `recipe_base` (fetching, checking and, where
/// the build will need it, decoding it into the cache).
pub fn open_base(
    opts: &Options,
    recipe_base: Option<&str>,
    progress: &dyn Progress,
) -> anyhow::Result<Base> {
    let base_name = opts
        .base
        .clone()
        .or_else(|| recipe_base.map(str::to_string))
        .ok_or(NoBase)?;
    let mut base = resolve_base(&base_name, &opts.recipe);
    let cache = Cache::open(&opts.acquire.cache_dir, progress)?;
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
    Ok(Base {
        path: base,
        sha256: base_sha256,
        cache,
        decoded_copy,
        decoded_now,
        image,
    })
}

/// Open the filesystems of `base`, read its facts and make the plan.
fn finish(opts: &Options, v: Validated, layers: &Layers, base: Base) -> anyhow::Result<Prepared> {
    let (epoch, epoch_source) = epoch(opts, &v)?;
    let image = base.image;
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
    let mut facts = facts::gather(&mut root, &mut boot)?;
    facts.note_table(&image.table);
    let plan = plan::make(&v, &facts, layers, &opts.stack, epoch)?;
    Ok(Prepared {
        recipe: v,
        base: base.path,
        base_sha256: base.sha256,
        cache: base.cache,
        decoded_copy: base.decoded_copy,
        decoded_now: base.decoded_now,
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

/// Decode the `.xz` base into the cache (every block, in parallel) and return the copy's path.
pub(super) fn decode_into_cache(
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
