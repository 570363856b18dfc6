//! The content-addressed cache of downloads and decoded images (layout: see [`crate::acquire`]).
//!
//! Only verified files enter it: they are written under `tmp/` and renamed into place, so a
//! reader never sees a partial file under a final name. Files in it are made read-only.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod lock;
mod verify;

use lock::{Mode, lock_file};
pub use lock::{Mode as LockMode, lock_waiting};
pub use verify::VerifyReport;

use super::Verification;
use super::error::AcquireError;
use crate::compress::Compression;
use crate::progress::Progress;

/// The cache directory, held open: while any `Cache` of a process lives, `cache clean` in
/// another waits (see [`Cache::open`]).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    /// The lock on `locks/cache.lock`: shared for every user, exclusive for `cache clean`.
    _hold: Arc<File>,
    exclusive: bool,
}

/// What is recorded beside a decoded image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    /// SHA-256 of the compressed file the image was decoded from (the cache key).
    pub key: String,
    /// SHA-256 of the decoded image; empty when it was never computed (a build decoded a
    /// multi-block `.xz` it had already identified by the compressed file's own hash).
    pub image_sha256: String,
    /// Decoded length in bytes.
    pub size: u64,
    /// Format it was decoded from.
    pub compression: String,
    /// Where the compressed file came from (URL or path) when it was decoded.
    pub origin: String,
    /// How the inputs were verified when the image entered the cache.
    pub verification: Verification,
    /// Seconds since the Unix epoch when the image entered the cache.
    pub created: u64,
    /// Set when the image entered the cache before its bytes were known to be on disk: the
    /// system boot (see [`boot_id`]) it was written in. A crash could have lost bytes that boot
    /// still had in memory, so the image is trusted only within that boot, and is synced (and
    /// this cleared) the first time it is used again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced_boot: Option<String>,
}

/// The identity of the running system boot, where the platform has one (Linux's
/// `/proc/sys/kernel/random/boot_id`); `PIBAKE_BOOT_ID` stands in for it in tests.
pub fn boot_id() -> Option<String> {
    let id = match std::env::var("PIBAKE_BOOT_ID") {
        Ok(id) => id,
        Err(_) => fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?,
    };
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// What is recorded beside a download.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadMeta {
    /// SHA-256 of the download (also its file name).
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// The URL it came from.
    pub url: String,
    /// Seconds since the Unix epoch when it was downloaded.
    pub created: u64,
}

/// A derived image's hash (`derived/<key>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Derived {
    key: String,
    sha256: String,
}

/// The key under which a derived image's hash is remembered: the cache key of its base and the
/// digest of the changes made to it ([`crate::disk::CowDisk::changes_digest`]).
pub fn derived_key(base_key: &str, changes_digest: &str) -> String {
    sha256_hex(format!("pibake-derived-v1\n{base_key}\n{changes_digest}\n").as_bytes())
}

/// One entry of `pibake cache ls`.
#[derive(Debug, Clone, Serialize)]
pub struct CacheEntry {
    /// `image`, `download` or `partial`.
    pub kind: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes actually allocated on disk (smaller for sparse images), where known.
    pub allocated: Option<u64>,
    /// Where it came from, when recorded.
    pub origin: Option<String>,
    /// Days since it was last used.
    pub age_days: f64,
}

/// What `pibake cache clean` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanReport {
    /// Files removed.
    pub removed: usize,
    /// Bytes freed (allocated bytes where known).
    pub freed: u64,
}

const SUBDIRS: &[&str] = &["downloads", "images", "hashes", "derived", "tmp"];

/// The default cache directory: `$XDG_CACHE_HOME/pibake`, else the platform's cache directory.
pub fn default_dir() -> PathBuf {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(x) = env("XDG_CACHE_HOME") {
        return x.join("pibake");
    }
    if cfg!(windows)
        && let Some(l) = env("LOCALAPPDATA")
    {
        return l.join("pibake").join("cache");
    }
    match env("HOME") {
        Some(h) if cfg!(target_os = "macos") => h.join("Library/Caches/pibake"),
        Some(h) => h.join(".cache/pibake"),
        None => std::env::temp_dir().join("pibake-cache"),
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cache {
    /// Use (and create if needed) the cache at `root`, sharing it with other processes.
    ///
    /// Every user holds a shared lock on the whole cache for as long as it lives, so that
    /// `cache clean` (which takes it alone, [`Cache::open_exclusive`]) never removes a file a
    /// running build is reading or about to read. Users never wait for each other here, only
    /// for a clean in progress; the per-download and per-decode locks order them beyond that.
    pub fn open(root: &Path, progress: &dyn Progress) -> Result<Self, AcquireError> {
        Self::open_as(root, Mode::Shared, progress)
    }

    /// Open the cache at `root` for this process alone, waiting (and saying so) until every
    /// other process using it has finished. [`Cache::clean`] needs it.
    pub fn open_exclusive(root: &Path, progress: &dyn Progress) -> Result<Self, AcquireError> {
        Self::open_as(root, Mode::Exclusive, progress)
    }

    fn open_as(root: &Path, mode: Mode, progress: &dyn Progress) -> Result<Self, AcquireError> {
        for d in SUBDIRS.iter().chain(&["locks"]) {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| AcquireError::io("cannot create", &p, root, e))?;
        }
        let what = match mode {
            Mode::Shared => "`pibake cache clean`",
            Mode::Exclusive => "the builds using this cache",
        };
        let hold = lock_file(root, &root.join("locks/cache.lock"), mode, what, progress)?;
        Ok(Cache {
            root: root.to_path_buf(),
            _hold: Arc::new(hold),
            exclusive: mode == Mode::Exclusive,
        })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn io(&self, what: &'static str, path: &Path, e: io::Error) -> AcquireError {
        AcquireError::io(what, path, &self.root, e)
    }

    /// Directory for files in progress.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The partial-download file for `url` (stable across runs so that it can be resumed).
    pub fn partial_path(&self, url: &str) -> PathBuf {
        self.tmp_dir().join(format!("{}.part", url_id(url)))
    }

    /// Hold the download of `url` for this process alone until the returned file is dropped.
    ///
    /// The partial file of a URL has one name so that the next run can resume it; two processes
    /// writing it at once would corrupt it or rename it from under each other. An advisory lock
    /// (flock on Unix, LockFileEx on Windows) is released by the kernel when its holder dies, so a
    /// killed pibake never leaves the cache locked. A waiter says what it waits for.
    pub fn lock_download(
        &self,
        url: &str,
        what: &str,
        progress: &dyn Progress,
    ) -> Result<File, AcquireError> {
        self.lock(&url_id(url), what, progress)
    }

    /// Hold the decoding of the download `key` into `images/` for this process alone, so that
    /// processes started together decode a base once and the others take the cached image.
    pub fn lock_decode(
        &self,
        key: &str,
        what: &str,
        progress: &dyn Progress,
    ) -> Result<File, AcquireError> {
        self.lock(&format!("decode-{key}"), what, progress)
    }

    fn lock(&self, name: &str, what: &str, progress: &dyn Progress) -> Result<File, AcquireError> {
        let path = self.root.join("locks").join(format!("{name}.lock"));
        lock_file(&self.root, &path, Mode::Exclusive, what, progress)
    }

    fn download_path(&self, sha: &str, ext: &str) -> PathBuf {
        self.root.join("downloads").join(format!("{sha}.{ext}"))
    }

    fn download_meta_path(&self, sha: &str) -> PathBuf {
        self.root.join("downloads").join(format!("{sha}.json"))
    }

    /// The verified download with this SHA-256, if cached.
    pub fn find_download(&self, sha: &str) -> Option<PathBuf> {
        let meta = self.download_meta_path(sha);
        let m: DownloadMeta = serde_json::from_slice(&fs::read(&meta).ok()?).ok()?;
        let dir = self.root.join("downloads");
        let found = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_stem().and_then(|s| s.to_str()) == Some(sha)
                    && p.extension().and_then(|s| s.to_str()) != Some("json")
            })?;
        let ok = fs::metadata(&found).ok()?.len() == m.size;
        if ok {
            touch(&meta);
        }
        ok.then_some(found)
    }

    /// Move a verified download into the cache; returns its path there.
    pub fn commit_download(
        &self,
        partial: &Path,
        sha: &str,
        ext: &str,
        url: &str,
        size: u64,
    ) -> Result<PathBuf, AcquireError> {
        let dest = self.download_path(sha, ext);
        make_read_only(partial);
        fs::rename(partial, &dest).map_err(|e| self.io("cannot move into the cache", &dest, e))?;
        let meta = DownloadMeta {
            sha256: sha.to_string(),
            size,
            url: url.to_string(),
            created: now_secs(),
        };
        self.write_json(&self.download_meta_path(sha), &meta)?;
        Ok(dest)
    }

    fn image_path(&self, key: &str) -> PathBuf {
        self.root.join("images").join(format!("{key}.img"))
    }

    fn image_meta_path(&self, key: &str) -> PathBuf {
        self.root.join("images").join(format!("{key}.json"))
    }

    /// The decoded image of the compressed file with SHA-256 `key`, if cached.
    pub fn find_image(&self, key: &str) -> Option<(PathBuf, ImageMeta)> {
        let meta_path = self.image_meta_path(key);
        let meta: ImageMeta = serde_json::from_slice(&fs::read(&meta_path).ok()?).ok()?;
        let img = self.image_path(key);
        if fs::metadata(&img).ok()?.len() != meta.size || meta.key != key {
            return None;
        }
        let meta = match meta.unsynced_boot {
            None => meta,
            // Written in an earlier boot and never synced: a crash may have cut it short.
            Some(ref boot) if boot_id().as_ref() != Some(boot) => return None,
            Some(_) => {
                File::open(&img).and_then(|f| f.sync_all()).ok()?;
                let synced = ImageMeta {
                    unsynced_boot: None,
                    ..meta
                };
                // Failing to record the sync only means syncing again next time.
                let _ = self.write_json(&meta_path, &synced);
                synced
            }
        };
        touch(&meta_path);
        Some((img, meta))
    }

    /// A new temporary file for a decode in progress (deleted when dropped unless committed).
    pub fn temp_image(&self) -> Result<tempfile::NamedTempFile, AcquireError> {
        tempfile::Builder::new()
            .prefix("decode-")
            .suffix(".img")
            .tempfile_in(self.tmp_dir())
            .map_err(|e| self.io("cannot create a file in", &self.tmp_dir(), e))
    }

    /// Move a verified decoded image into the cache.
    pub fn commit_image(
        &self,
        tmp: tempfile::NamedTempFile,
        meta: &ImageMeta,
    ) -> Result<PathBuf, AcquireError> {
        let dest = self.image_path(&meta.key);
        make_read_only(tmp.path());
        let _ = fs::remove_file(self.image_meta_path(&meta.key));
        tmp.persist(&dest)
            .map_err(|e| self.io("cannot move into the cache", &dest, e.error))?;
        self.write_json(&self.image_meta_path(&meta.key), meta)?;
        Ok(dest)
    }

    /// The SHA-256 recorded by [`Cache::record_derived`] for `key`, if any.
    pub fn find_derived(&self, key: &str) -> Option<String> {
        let path = self.derived_path(key);
        let d: Derived = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        (d.key == key).then(|| {
            touch(&path);
            d.sha256
        })
    }

    /// Remember that the image derived as `key` (a cached decoded base plus a set of changes,
    /// see [`derived_key`]) has SHA-256 `sha256`, so an identical rebuild need not hash it.
    pub fn record_derived(&self, key: &str, sha256: &str) -> Result<(), AcquireError> {
        let d = Derived {
            key: key.to_string(),
            sha256: sha256.to_string(),
        };
        self.write_json(&self.derived_path(key), &d)
    }

    fn derived_path(&self, key: &str) -> PathBuf {
        self.root.join("derived").join(format!("{key}.json"))
    }

    fn write_json<T: Serialize>(&self, path: &Path, v: &T) -> Result<(), AcquireError> {
        let json = serde_json::to_vec_pretty(v)
            .map_err(|e| self.io("cannot encode", path, io::Error::other(e)))?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(|e| self.io("cannot create a file in", &self.tmp_dir(), e))?;
        io::Write::write_all(&mut tmp, &json).map_err(|e| self.io("cannot write", path, e))?;
        tmp.persist(path)
            .map_err(|e| self.io("cannot write", path, e.error))?;
        Ok(())
    }

    /// SHA-256 of a local file, remembered by path, size, modification time (and inode) so an
    /// unchanged file is hashed once.
    pub fn hash_local(&self, path: &Path, progress: &dyn Progress) -> Result<String, AcquireError> {
        let local = |e| AcquireError::Local {
            path: path.to_path_buf(),
            source: e,
        };
        let abs = fs::canonicalize(path).map_err(local)?;
        let md = fs::metadata(&abs).map_err(local)?;
        let stamp = file_stamp(&abs, &md);
        let memo = self
            .root
            .join("hashes")
            .join(format!("{}.json", &sha256_hex(stamp.as_bytes())[..32]));
        if let Some(sha) = fs::read_to_string(&memo)
            .ok()
            .and_then(|s| serde_json::from_str::<HashMemo>(&s).ok())
            .filter(|m| m.stamp == stamp)
            .map(|m| m.sha256)
        {
            touch(&memo);
            return Ok(sha);
        }
        let name = abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        progress.begin(&format!("hash {name}"), Some(md.len()));
        let sha = hash_file(&abs, &mut |n| progress.set(n)).map_err(local);
        progress.end();
        let sha = sha?;
        // A memo that cannot be written only costs a re-hash next time.
        let _ = self.write_json(
            &memo,
            &HashMemo {
                stamp,
                sha256: sha.clone(),
            },
        );
        Ok(sha)
    }

    /// Everything in the cache.
    pub fn list(&self) -> Vec<CacheEntry> {
        let mut out = Vec::new();
        let now = SystemTime::now();
        for (dir, kind) in [
            ("images", "image"),
            ("downloads", "download"),
            ("tmp", "partial"),
        ] {
            let Ok(rd) = fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let path = e.path();
                if path.extension().and_then(|s| s.to_str()) == Some("json") {
                    continue;
                }
                let Ok(md) = e.metadata() else { continue };
                let meta_path = path.with_extension("json");
                let origin = fs::read(&meta_path).ok().and_then(|b| {
                    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
                    v.get("origin")
                        .or_else(|| v.get("url"))
                        .and_then(|s| s.as_str())
                        .map(str::to_string)
                });
                let used = fs::metadata(&meta_path)
                    .and_then(|m| m.modified())
                    .or_else(|_| md.modified())
                    .unwrap_or(now);
                out.push(CacheEntry {
                    kind,
                    size: md.len(),
                    allocated: allocated(&md),
                    origin,
                    age_days: now.duration_since(used).unwrap_or_default().as_secs_f64() / 86400.0,
                    path,
                });
            }
        }
        out.sort_by(|a, b| a.kind.cmp(b.kind).then(a.path.cmp(&b.path)));
        out
    }

    /// Remove entries not used for `older_than` (everything when `None`). The cache must have
    /// been opened with [`Cache::open_exclusive`], so nothing removed is in use.
    pub fn clean(&self, older_than: Option<Duration>) -> Result<CleanReport, AcquireError> {
        debug_assert!(
            self.exclusive,
            "clean needs the cache opened for this process alone"
        );
        let mut report = CleanReport::default();
        let now = SystemTime::now();
        for sub in SUBDIRS {
            let dir = self.root.join(sub);
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let path = e.path();
                let Ok(md) = e.metadata() else { continue };
                if md.is_dir() {
                    continue;
                }
                // Age of an entry = age of its metadata file (touched on every use).
                let meta_path = path.with_extension("json");
                let used = fs::metadata(&meta_path)
                    .and_then(|m| m.modified())
                    .or_else(|_| md.modified())
                    .unwrap_or(now);
                let age = now.duration_since(used).unwrap_or_default();
                if older_than.is_some_and(|limit| age < limit) {
                    continue;
                }
                let mut perms = md.permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perms.set_readonly(false);
                let _ = fs::set_permissions(&path, perms);
                fs::remove_file(&path).map_err(|e| self.io("cannot remove", &path, e))?;
                report.removed += 1;
                report.freed += allocated(&md).unwrap_or(md.len());
            }
        }
        Ok(report)
    }
}

#[derive(Serialize, Deserialize)]
struct HashMemo {
    stamp: String,
    sha256: String,
}

fn file_stamp(path: &Path, md: &fs::Metadata) -> String {
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let ino = {
        use std::os::unix::fs::MetadataExt;
        format!("{}:{}", md.dev(), md.ino())
    };
    #[cfg(not(unix))]
    let ino = String::new();
    format!("{}|{}|{}|{}", path.display(), md.len(), mtime, ino)
}

fn allocated(md: &fs::Metadata) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(md.blocks() * 512)
    }
    #[cfg(not(unix))]
    {
        let _ = md;
        None
    }
}

/// Mark an entry as used now (its age for `cache clean --older-than`).
fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn make_read_only(path: &Path) {
    if let Ok(md) = fs::metadata(path) {
        let mut p = md.permissions();
        p.set_readonly(true);
        let _ = fs::set_permissions(path, p);
    }
}

/// The short name of a URL's files in the cache (its partial download, its lock).
fn url_id(url: &str) -> String {
    sha256_hex(url.as_bytes())[..32].to_string()
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file, streaming.
pub fn hash_file(path: &Path, progress: &mut dyn FnMut(u64)) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
    Ok(hex::encode(h.finalize()))
}

/// Compression for a format, as a file extension in the cache.
pub(crate) fn extension(c: Compression) -> &'static str {
    match c {
        Compression::None => "img",
        Compression::Xz => "xz",
        Compression::Zstd => "zst",
        Compression::Gzip => "gz",
        Compression::Zip => "zip",
    }
}
