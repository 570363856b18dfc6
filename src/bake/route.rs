//! How a build's output is produced from its base: the route (every block encoded, xz blocks
//! copied or spliced, the base decoded once, a cached decoded copy cloned) and the writing.

use std::path::Path;

use super::Prepared;
use super::prepare::decode_into_cache;
use crate::acquire::cache;
use crate::output::{Format, Written};
use crate::progress::Progress;

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
pub(super) fn apply_and_write(
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
