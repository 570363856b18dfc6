//! Carrying out the way `output::route` picks: apply the plan, then write every block encoded,
//! xz blocks copied or rewritten, the base decoded once, or a cached decoded copy cloned.

use anyhow::Context as _;
use std::path::Path;

use super::Prepared;
use super::prepare::decode_into_cache;
use crate::acquire::cache;
use crate::output::route::{Route, Way};
use crate::output::{Format, Written};
use crate::progress::Progress;

/// Apply the plan into the copy-on-write layer and write the result to `out` by the cheapest
/// route the base and the output format allow.
pub(super) fn apply_and_write(
    p: &mut Prepared,
    out: &Path,
    pieces: Option<&crate::output::xz_patch::Pieces>,
    progress: &dyn Progress,
) -> anyhow::Result<(crate::apply::Report, Written, Route)> {
    let format = Format::from_path(out)?;
    let way = crate::output::route::choose(format, p.image.xz.is_some(), p.trust_cache);
    let xz = match (&p.image.xz, way) {
        (Some(xz), Way::XzPatch | Way::XzDecode | Way::ViaCache) => xz.clone(),
        _ => {
            let report = edit(p)?;
            let written = crate::output::write(&p.image.disk, out, progress)?;
            return Ok((report, written, Route::Full));
        }
    };
    if way == Way::XzPatch {
        let report = edit(p)?;
        let threads = crate::output::threads() as usize;
        let w = crate::output::xz_patch::write_patched(
            &xz,
            &p.image.disk,
            out,
            threads,
            pieces,
            progress,
        )?;
        let route = Route::XzPatch {
            base_blocks: w.base_blocks,
            blocks: w.blocks,
            reused: w.reused,
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
    if way == Way::XzDecode {
        // One pass over the base, trusting nothing: every block decoded and checked, the
        // changes laid over it, the result hashed.
        let report = edit(p)?;
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
    let report = edit(p)?;
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

/// Apply the plan, then clear what it freed, so no old bytes ship in the output.
fn edit(p: &mut Prepared) -> anyhow::Result<crate::apply::Report> {
    let report = crate::apply::apply(&p.plan, &mut p.root, &mut p.boot)?;
    if let Some(change) = &p.plan.disk_id {
        crate::disk::partition::set_mbr_disk_id(&p.image.disk, &change.to)
            .context("cannot write the new disk identifier")?;
    }
    crate::scrub::zero_freed(&p.image)
        .map_err(|e| anyhow::Error::from(e).context("cannot clear the space the edits freed"))?;
    Ok(report)
}

/// SHA-256 of the built raw image, read through the copy-on-write layer (decoding an `.xz`
/// base's blocks in parallel).
pub(super) fn raw_sha256(p: &Prepared, progress: &dyn Progress) -> anyhow::Result<String> {
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
