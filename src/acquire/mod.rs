//! Getting a base image: from the Raspberry Pi OS list, an http(s) URL or a local file; resumable,
//! verified downloads; decoding on every core; and a content-addressed cache so that a second
//! build neither downloads nor decodes.
//!
//! [`resolve`] is the one entry point every command that takes a base uses.
//!
//! # Cache layout
//!
//! The cache lives in `--cache-dir`, else `$PIBAKE_CACHE_DIR` (both handled by the CLI), else
//! `$XDG_CACHE_HOME/pibake`, else the platform's cache directory (see [`cache::default_dir`]).
//!
//! ```text
//! <cache>/
//!   downloads/<sha256>.<xz|gz|zst|zip|img>   verified downloads, named by their own SHA-256
//!   downloads/<sha256>.json                  URL, size and date of each download
//!   images/<key>.img                         decoded raw images (sparse, read-only);
//!                                            key = SHA-256 of the compressed file
//!   images/<key>.json                        the image's SHA-256, size, origin and how it was
//!                                            verified when it entered the cache
//!   hashes/<id>.json                         SHA-256 of local files by path, size, mtime, inode
//!   tmp/<id>.part, tmp/<id>.part.json        a download in progress and its server validator
//!                                            (resumed by the next run)
//!   locks/cache.lock                         shared by every process using the cache; held
//!                                            alone by `cache clean` and `cache verify`
//!   locks/<id>.lock                          held by the one process downloading that URL
//!   locks/decode-<key>.lock                  held by the one process decoding that download
//!   tmp/decode-*.img                         a decode in progress
//! ```
//!
//! Only verified files enter `downloads/` and `images/`: each is written under `tmp/` and
//! renamed. A metadata file's modification time is its last use (for `cache clean
//! --older-than`). Cached images are trusted without re-hashing: they were verified on entry and
//! are read-only.

pub mod cache;
pub mod download;
mod error;
pub mod oslist;
mod signature;
pub mod source;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::compress::{self, Compression};
use crate::progress::Progress;
use cache::{Cache, ImageMeta};
use download::Http;
pub use error::AcquireError;
use oslist::OsEntry;
pub use source::{OsSelector, Source};

/// How to acquire a base.
#[derive(Debug, Clone)]
pub struct AcquireOptions {
    /// URL (or local path) of the OS list.
    pub os_list: String,
    /// The cache directory.
    pub cache_dir: PathBuf,
    /// Expected SHA-256 of a URL download or local file (`--sha256`).
    pub sha256: Option<String>,
    /// Accept a URL download that nothing can verify (`--insecure-no-verify`).
    pub insecure_no_verify: bool,
    /// OpenPGP public key to check the `.sig` beside a download (`--signing-key`).
    pub signing_key: Option<PathBuf>,
    /// Retries after a transient failure (each download attempt that makes progress resets it).
    pub retries: u32,
    /// First wait before a retry; doubles every retry (capped at a minute).
    pub backoff: Duration,
    /// Connect timeout and longest silence while reading.
    pub timeout: Duration,
    /// Use `HTTP(S)_PROXY`, `ALL_PROXY` and `NO_PROXY` from the environment.
    pub use_env_proxy: bool,
    /// Return a verified multi-block `.xz` download as it is, without decoding it, when it can be
    /// read at random (what builds want: they decode only the blocks they touch).
    pub prefer_compressed: bool,
    /// Test seam: the download writer fails with "no space left on device" after this many
    /// bytes. Always `None` outside tests.
    #[doc(hidden)]
    pub fail_writes_after: Option<u64>,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        AcquireOptions {
            os_list: oslist::DEFAULT_OS_LIST.to_string(),
            cache_dir: cache::default_dir(),
            sha256: None,
            insecure_no_verify: false,
            signing_key: None,
            retries: 5,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            use_env_proxy: true,
            fail_writes_after: None,
            prefer_compressed: false,
        }
    }
}

/// How the base was verified: recorded in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verification {
    /// Where the expected checksums came from.
    pub method: VerifyMethod,
    /// SHA-256 of the compressed file (download or local), when there was one.
    pub download_sha256: Option<String>,
    /// Whether `download_sha256` was compared with an expected value (false: only computed).
    pub download_sha256_checked: bool,
    /// SHA-256 of the decoded raw image.
    pub image_sha256: String,
    /// Whether `image_sha256` was compared with an expected value (the OS list's
    /// `extract_sha256`, or `--sha256` for a raw file).
    pub image_sha256_checked: bool,
    /// The OpenPGP signature check, when `--signing-key` was given.
    pub signature: Option<SignatureCheck>,
}

impl Verification {
    /// A local file nobody gave a checksum for, whose SHA-256 is `sha256`.
    pub fn local_unchecked(sha256: &str) -> Self {
        Verification {
            method: VerifyMethod::LocalUnchecked,
            download_sha256: Some(sha256.to_string()),
            download_sha256_checked: false,
            image_sha256: String::new(),
            image_sha256_checked: false,
            signature: None,
        }
    }
}

/// Where the expected checksums came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMethod {
    /// `image_download_sha256` and `extract_sha256` of the OS list.
    OsList,
    /// The `URL.sha256` file beside a download.
    Sidecar,
    /// `--sha256` on the command line.
    Sha256Option,
    /// Nothing: `--insecure-no-verify`.
    Insecure,
    /// A local file the user named, without `--sha256`: hashed, not checked.
    LocalUnchecked,
}

/// Result of an OpenPGP signature check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignatureCheck {
    /// URL of the detached signature.
    pub signature_url: String,
    /// Fingerprint of the key that made it.
    pub key_fingerprint: String,
}

/// Where the base came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// An OS-list entry.
    OsList {
        /// The list's URL.
        list: String,
        /// The entry's `name`.
        name: String,
        /// pibake's short name of it.
        short_name: Option<String>,
        /// Its release date.
        release_date: String,
        /// Its download URL.
        url: String,
        /// Its `init_format`.
        init_format: String,
    },
    /// An http(s) URL.
    Url {
        /// The URL.
        url: String,
    },
    /// A file on this machine.
    Local {
        /// The path given.
        path: PathBuf,
    },
}

/// A base image ready to open.
#[derive(Debug, Clone, Serialize)]
pub struct Acquired {
    /// The image to open: the raw image in the cache, a local raw file used in place, or (with
    /// [`AcquireOptions::prefer_compressed`]) a multi-block `.xz` download. Never write to it.
    pub image: PathBuf,
    /// Where it came from.
    pub origin: Origin,
    /// How the input was compressed.
    pub compression: Compression,
    /// SHA-256 of the compressed input, when there was one.
    pub compressed_sha256: Option<String>,
    /// SHA-256 of the raw image.
    pub image_sha256: String,
    /// Length of the raw image in bytes.
    pub image_size: u64,
    /// How the input was verified.
    pub verification: Verification,
    /// True when nothing was downloaded or decoded this time.
    pub from_cache: bool,
}

/// Lower-case `s` if it is a SHA-256 in hex (64 hex digits, optionally `sha256:`-prefixed).
pub fn normalize_sha256(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// Get the base `source` names (see [`Source::parse`]), verified and decoded, from the cache
/// when possible.
pub fn resolve(
    source: &str,
    opts: &AcquireOptions,
    progress: &dyn Progress,
) -> Result<Acquired, AcquireError> {
    let wanted = match &opts.sha256 {
        Some(s) => Some(normalize_sha256(s).ok_or_else(|| AcquireError::BadSha256 {
            what: "--sha256".into(),
            value: s.clone(),
        })?),
        None => None,
    };
    let source = Source::parse(source)?;
    let cache = Cache::open(&opts.cache_dir, progress)?;
    match source {
        Source::Local(path) => resolve_local(&path, wanted, &cache, progress),
        Source::Url(url) => resolve_url(&url, wanted, opts, &cache, progress),
        Source::Os(sel) => resolve_os(&sel, opts, &cache, progress),
    }
}

/// The entries of the OS list at `opts.os_list`, nested lists included.
pub fn os_list(opts: &AcquireOptions) -> Result<Vec<OsEntry>, AcquireError> {
    let http = Http::new(opts)?;
    oslist::load(&http, &opts.os_list)
}

fn resolve_local(
    path: &Path,
    wanted: Option<String>,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<Acquired, AcquireError> {
    let local = |e| AcquireError::Local {
        path: path.to_path_buf(),
        source: e,
    };
    let md = std::fs::metadata(path).map_err(local)?;
    if md.is_dir() {
        return Err(local(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is a directory",
        )));
    }
    let compression = compress::detect(path).map_err(|source| AcquireError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    let sha = cache.hash_local(path, progress)?;
    if let Some(w) = &wanted
        && *w != sha
    {
        return Err(AcquireError::LocalChecksumMismatch {
            path: path.to_path_buf(),
            expected: w.clone(),
            actual: sha,
        });
    }
    let method = if wanted.is_some() {
        VerifyMethod::Sha256Option
    } else {
        VerifyMethod::LocalUnchecked
    };
    let origin = Origin::Local {
        path: path.to_path_buf(),
    };
    if compression == Compression::None {
        return Ok(Acquired {
            image: path.to_path_buf(),
            origin,
            compression,
            compressed_sha256: None,
            image_sha256: sha.clone(),
            image_size: md.len(),
            verification: Verification {
                method,
                download_sha256: None,
                download_sha256_checked: false,
                image_sha256: sha,
                image_sha256_checked: wanted.is_some(),
                signature: None,
            },
            from_cache: false,
        });
    }
    let verification = Verification {
        method,
        download_sha256: Some(sha.clone()),
        download_sha256_checked: wanted.is_some(),
        image_sha256: String::new(),
        image_sha256_checked: false,
        signature: None,
    };
    let origin_text = path.display().to_string();
    decode_cached(
        cache,
        path,
        compression,
        &sha,
        None,
        &origin_text,
        origin,
        verification,
        progress,
    )
}

fn resolve_url(
    url: &str,
    wanted: Option<String>,
    opts: &AcquireOptions,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<Acquired, AcquireError> {
    let http = Http::new(opts)?;
    let (expected, method) = match wanted {
        Some(w) => (Some(w), VerifyMethod::Sha256Option),
        None => match fetch_sidecar(&http, url)? {
            Some(s) => (Some(s), VerifyMethod::Sidecar),
            None if opts.insecure_no_verify => (None, VerifyMethod::Insecure),
            None => {
                return Err(AcquireError::Unverifiable {
                    url: url.to_string(),
                });
            }
        },
    };
    let expected_from = match method {
        VerifyMethod::Sidecar => format!("{url}.sha256"),
        _ => "--sha256".to_string(),
    };
    let target = Target {
        url,
        sha256: expected.as_deref(),
        expected_from: &expected_from,
        size: None,
    };
    let origin = Origin::Url {
        url: url.to_string(),
    };
    fetch_and_decode(&http, cache, opts, &target, None, origin, method, progress)
}

fn resolve_os(
    sel: &OsSelector,
    opts: &AcquireOptions,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<Acquired, AcquireError> {
    let http = Http::new(opts)?;
    let entries = oslist::load(&http, &opts.os_list)?;
    let entry = oslist::select(&entries, sel, &opts.os_list)?;
    let req = entry.require()?;
    let origin = Origin::OsList {
        list: opts.os_list.clone(),
        name: entry.name.clone(),
        short_name: entry.short_name.clone(),
        release_date: req.release_date.clone(),
        url: req.url.clone(),
        init_format: entry.init_format.clone(),
    };
    let target = Target {
        url: &req.url,
        sha256: Some(&req.download_sha256),
        expected_from: "the OS list's image_download_sha256",
        size: req.download_size,
    };
    fetch_and_decode(
        &http,
        cache,
        opts,
        &target,
        Some(&req.extract_sha256),
        origin,
        VerifyMethod::OsList,
        progress,
    )
}

/// A download and what it must match.
struct Target<'a> {
    url: &'a str,
    sha256: Option<&'a str>,
    expected_from: &'a str,
    size: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
fn fetch_and_decode(
    http: &Http,
    cache: &Cache,
    opts: &AcquireOptions,
    t: &Target<'_>,
    extract_sha256: Option<&str>,
    origin: Origin,
    method: VerifyMethod,
    progress: &dyn Progress,
) -> Result<Acquired, AcquireError> {
    if opts.prefer_compressed
        && let Some(hit) = compressed_in_place(http, cache, opts, t, &origin, method, progress)?
    {
        return Ok(hit);
    }
    // Fast path: the decoded image is cached, so neither download nor decode.
    if let Some(sha) = t.sha256
        && opts.signing_key.is_none()
        && let Some(hit) = cached_image(cache, sha, extract_sha256, &origin, method)
    {
        return Ok(hit);
    }
    let (file, sha) = match t
        .sha256
        .and_then(|s| cache.find_download(s).map(|p| (p, s)))
    {
        Some((p, s)) => (p, s.to_string()),
        None => download_verified(http, cache, t, progress)?,
    };
    let signature = match &opts.signing_key {
        Some(key) => Some(signature::verify(http, t.url, &file, key)?),
        None => None,
    };
    let compression = compress::detect(&file).map_err(|source| AcquireError::Decode {
        path: file.clone(),
        source,
    })?;
    let verification = Verification {
        method,
        download_sha256: Some(sha.clone()),
        download_sha256_checked: t.sha256.is_some(),
        image_sha256: String::new(),
        image_sha256_checked: false,
        signature,
    };
    decode_cached(
        cache,
        &file,
        compression,
        &sha,
        extract_sha256,
        t.url,
        origin,
        verification,
        progress,
    )
}

/// The verified download itself, when it is an `.xz` that can be read at random; `None` when it
/// must be decoded whole (or nothing is cached and the decoded image is: then that is cheaper).
fn compressed_in_place(
    http: &Http,
    cache: &Cache,
    opts: &AcquireOptions,
    t: &Target<'_>,
    origin: &Origin,
    method: VerifyMethod,
    progress: &dyn Progress,
) -> Result<Option<Acquired>, AcquireError> {
    let cached = t
        .sha256
        .and_then(|s| cache.find_download(s).map(|p| (p, s.to_string())));
    let (file, sha, from_cache) = match cached {
        Some((p, s)) => (p, s, true),
        None => {
            let decoded_cached = t.sha256.is_some_and(|s| cache.find_image(s).is_some());
            if decoded_cached {
                return Ok(None);
            }
            let (p, s) = download_verified(http, cache, t, progress)?;
            (p, s, false)
        }
    };
    if compress::detect(&file).ok() != Some(Compression::Xz) {
        return Ok(None);
    }
    let Ok(dev) = crate::xz::XzReader::open(&file, 0) else {
        return Ok(None);
    };
    let signature = match &opts.signing_key {
        Some(key) => Some(signature::verify(http, t.url, &file, key)?),
        None => None,
    };
    Ok(Some(Acquired {
        image: file,
        origin: origin.clone(),
        compression: Compression::Xz,
        compressed_sha256: Some(sha.clone()),
        image_sha256: String::new(),
        image_size: dev.len(),
        verification: Verification {
            method,
            download_sha256: Some(sha),
            download_sha256_checked: t.sha256.is_some(),
            image_sha256: String::new(),
            image_sha256_checked: false,
            signature,
        },
        from_cache,
    }))
}

fn cached_image(
    cache: &Cache,
    key: &str,
    extract_sha256: Option<&str>,
    origin: &Origin,
    method: VerifyMethod,
) -> Option<Acquired> {
    let (path, meta) = cache.find_image(key)?;
    if extract_sha256.is_some_and(|x| x != meta.image_sha256) {
        return None;
    }
    let mut verification = meta.verification.clone();
    verification.method = method;
    verification.image_sha256_checked |= extract_sha256.is_some();
    Some(Acquired {
        image: path,
        origin: origin.clone(),
        compression: compression_from_name(&meta.compression),
        compressed_sha256: Some(key.to_string()),
        image_sha256: meta.image_sha256,
        image_size: meta.size,
        verification,
        from_cache: true,
    })
}

fn compression_from_name(s: &str) -> Compression {
    match s {
        "xz" => Compression::Xz,
        "zstd" => Compression::Zstd,
        "gzip" => Compression::Gzip,
        "zip" => Compression::Zip,
        _ => Compression::None,
    }
}

/// Download `t.url` into the cache, verified against `t.sha256` when given.
fn download_verified(
    http: &Http,
    cache: &Cache,
    t: &Target<'_>,
    progress: &dyn Progress,
) -> Result<(PathBuf, String), AcquireError> {
    let partial = cache.partial_path(t.url);
    let label = format!("download {}", file_name(t.url));
    let _alone = cache.lock_download(t.url, &label, progress)?;
    // Whoever held the lock before may have finished this very download.
    if let Some((path, sha)) = t
        .sha256
        .and_then(|s| cache.find_download(s).map(|p| (p, s.to_string())))
    {
        return Ok((path, sha));
    }
    let got = http.download(t.url, &partial, t.size, cache.root(), &label, progress)?;
    if let Some(expected) = t.sha256
        && got.sha256 != expected
    {
        download::discard_partial(&partial);
        return Err(AcquireError::ChecksumMismatch {
            what: t.url.to_string(),
            expected: expected.to_string(),
            actual: got.sha256,
            expected_from: t.expected_from.to_string(),
        });
    }
    if let Some(size) = t.size.filter(|&s| s != got.size) {
        download::discard_partial(&partial);
        return Err(AcquireError::BadOsList {
            url: t.url.to_string(),
            reason: format!(
                "image_download_size says {size} bytes but the verified download has {}",
                got.size
            ),
        });
    }
    let compression = compress::detect(&partial).map_err(|source| AcquireError::Decode {
        path: partial.clone(),
        source,
    });
    let ext = match compression {
        Ok(c) => cache::extension(c),
        Err(e) => {
            download::discard_partial(&partial);
            return Err(e);
        }
    };
    let path = cache.commit_download(&partial, &got.sha256, ext, t.url, got.size)?;
    Ok((path, got.sha256))
}

fn file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(url)
}

/// Decode `src` into the cache under `key` (or take the cached result), checking the decoded
/// SHA-256 against `extract_sha256` when given.
#[allow(clippy::too_many_arguments)]
fn decode_cached(
    cache: &Cache,
    src: &Path,
    compression: Compression,
    key: &str,
    extract_sha256: Option<&str>,
    origin_text: &str,
    origin: Origin,
    mut verification: Verification,
    progress: &dyn Progress,
) -> Result<Acquired, AcquireError> {
    let cached = |verification: &mut Verification| {
        cached_image(cache, key, extract_sha256, &origin, verification.method).map(|mut hit| {
            hit.verification.signature = verification.signature.take();
            hit.verification.download_sha256_checked = verification.download_sha256_checked;
            hit
        })
    };
    if let Some(hit) = cached(&mut verification) {
        return Ok(hit);
    }
    let label = format!("decode {}", file_name(origin_text));
    let _alone = cache.lock_decode(key, &label, progress)?;
    // Whoever held the lock before may have decoded this very image.
    if let Some(hit) = cached(&mut verification) {
        return Ok(hit);
    }
    let mut tmp = cache.temp_image()?;
    progress.begin(&label, None);
    let decoded = compress::decode_hashed(
        src,
        compression,
        tmp.as_file_mut(),
        extract_sha256.is_some(),
        &mut |n| progress.set(n),
    );
    progress.end();
    let decoded = decoded.map_err(|source| match source {
        compress::DecodeError::Io(e) => cache.io("cannot decode into", &cache.tmp_dir(), e),
        source => AcquireError::Decode {
            path: src.to_path_buf(),
            source,
        },
    })?;
    let image_sha256 = hex::encode(decoded.sha256);
    if let Some(x) = extract_sha256
        && x != image_sha256
    {
        drop(tmp);
        return Err(AcquireError::ChecksumMismatch {
            what: format!("the decoded image of {origin_text}"),
            expected: x.to_string(),
            actual: image_sha256,
            expected_from: "the OS list's extract_sha256".into(),
        });
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| cache.io("cannot write", tmp.path(), e))?;
    verification.image_sha256 = image_sha256.clone();
    verification.image_sha256_checked = extract_sha256.is_some();
    let meta = ImageMeta {
        key: key.to_string(),
        image_sha256: image_sha256.clone(),
        size: decoded.len,
        compression: compression.name().to_string(),
        origin: origin_text.to_string(),
        verification: verification.clone(),
        created: cache::now_secs(),
        unsynced_boot: None,
    };
    let image = cache.commit_image(tmp, &meta)?;
    Ok(Acquired {
        image,
        origin,
        compression,
        compressed_sha256: Some(key.to_string()),
        image_sha256,
        image_size: decoded.len,
        verification,
        from_cache: false,
    })
}

/// The SHA-256 in `URL.sha256` (sha256sum format), or `None` when the server has no such file.
fn fetch_sidecar(http: &Http, url: &str) -> Result<Option<String>, AcquireError> {
    let side = format!("{url}.sha256");
    let Some(body) = http.get_small(&side, 64 << 10)? else {
        return Ok(None);
    };
    sidecar_sha256(&body)
        .map(Some)
        .ok_or_else(|| AcquireError::BadSha256 {
            what: side,
            value: String::from_utf8_lossy(&body).chars().take(100).collect(),
        })
}

/// The SHA-256 a `URL.sha256` file (sha256sum format: digest first) holds, if it is one.
pub fn sidecar_sha256(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    normalize_sha256(text.split_whitespace().next().unwrap_or(""))
}
