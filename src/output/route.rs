//! Which way an output is produced from its base, and the record of how it was. The choice
//! depends only on the output format, on whether the base is a multi-block `.xz` read in
//! place, and on whether the cache may stand in for work; `bake` carries it out.

use super::Format;

/// The cheapest way to an output, before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Read every byte through the copy-on-write layer and encode it.
    Full,
    /// Copy the `.xz` base's untouched blocks, re-encode (splice) the touched ones.
    XzPatch,
    /// Decode every block once, lay the changes over it, trusting nothing cached.
    XzDecode,
    /// Through the decoded copy of the base in the cache (made now if missing).
    ViaCache,
}

/// Pick the way for `format` from a base that is (`xz_base`) or is not a multi-block `.xz`
/// read in place; `trust_cache` lets a cached decoded copy stand in for decoding.
pub fn choose(format: Format, xz_base: bool, trust_cache: bool) -> Way {
    match (xz_base, format) {
        (true, Format::Xz) => Way::XzPatch,
        (true, Format::Raw) if trust_cache => Way::ViaCache,
        (true, Format::Raw) => Way::XzDecode,
        _ => Way::Full,
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
    /// rewritten as smaller blocks.
    XzPatch {
        /// Blocks in the base.
        base_blocks: usize,
        /// Blocks in the output.
        blocks: usize,
        /// Base blocks rewritten because the build changed them.
        reencoded: usize,
        /// Compressed bytes copied verbatim from the base: whole blocks, and LZMA2 chunks kept
        /// at the start of rewritten ones.
        copied_bytes: u64,
        /// Decoded bytes that went through the compressor again.
        compressed_again: u64,
        /// Decoded bytes whose compressed pieces another build of the same base had made.
        reused: u64,
        /// Rewritten blocks whose chunks could not be read (another filter chain), so none was
        /// kept.
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
        method: super::clone::CloneMethod,
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
                base_blocks,
                blocks,
                reencoded,
                compressed_again,
                reused,
                ..
            } => {
                let mib = |b: &u64| *b as f64 / 1048576.0;
                let shared = if *reused > 0 {
                    format!(", {:.1} MiB shared with another node", mib(reused))
                } else {
                    String::new()
                };
                format!(
                    "{} of {base_blocks} xz blocks copied verbatim, {reencoded} rewritten as {} \
                     ({:.1} MiB compressed again{shared})",
                    base_blocks - reencoded,
                    blocks + reencoded - base_blocks,
                    mib(compressed_again)
                )
            }
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
                    super::clone::CloneMethod::Reflink => "reflink",
                    super::clone::CloneMethod::KernelCopy => "in-kernel copy",
                    super::clone::CloneMethod::ReadWrite => "read and write",
                },
                if *hash_reused { ", hash known" } else { "" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_way_follows_format_base_and_trust() {
        assert_eq!(choose(Format::Xz, true, true), Way::XzPatch);
        assert_eq!(choose(Format::Raw, true, true), Way::ViaCache);
        assert_eq!(choose(Format::Raw, true, false), Way::XzDecode);
        assert_eq!(choose(Format::Zstd, true, true), Way::Full);
        assert_eq!(choose(Format::Raw, false, true), Way::Full);
        assert_eq!(choose(Format::Xz, false, false), Way::Full);
    }
}
