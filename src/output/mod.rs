//! Writing results: the base combined with the copy-on-write layer, as a sparse raw image, an
//! `.img.xz` or an `.img.zst`; the bmaptool block map beside it; an entry for Raspberry Pi
//! Imager's OS list; and straight to a card.
//!
//! Every file is written under a temporary name in the destination's directory and renamed over
//! the final name only when complete and synced, so a failure never leaves a partial output
//! under the name the user asked for. Nothing here reads a clock or a random source: the same
//! disk gives byte-identical files on every run and machine.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::disk::CowDisk;
use crate::progress::Progress;

pub mod bmap;
pub mod clone;
mod direct;
pub mod flash;
mod hash_behind;
pub mod imager;
pub mod raw;
pub mod route;
mod used;
pub mod xz;
pub mod xz_patch;
pub mod zstd;

/// How much of the image is read per step while streaming it to an encoder.
const READ_STEP: usize = 4 << 20;

/// Why an output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output directory does not exist or cannot be written.
    #[error("cannot write {path}: {source}")]
    Create {
        /// The output path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Writing failed part-way (the partial file has been removed).
    #[error("writing {path} failed: {source}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Reading the image being written failed.
    #[error("reading the image for {path} failed: {source}")]
    Read {
        /// The output path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The compressor refused its settings or failed.
    #[error("{format} encoder for {path}: {detail}")]
    Encoder {
        /// `xz` or `zstd`.
        format: &'static str,
        /// The output path.
        path: PathBuf,
        /// What the library said.
        detail: String,
    },
    /// The file name names no format pibake writes.
    #[error(
        "{path}: unknown output format; name the output *.img (sparse raw), *.img.xz or *.img.zst"
    )]
    UnknownFormat {
        /// The output path.
        path: PathBuf,
    },
}

impl OutputError {
    /// True when the user's request is at fault (an output name pibake cannot write, a directory
    /// that does not exist), not the machine.
    pub fn is_bad_input(&self) -> bool {
        match self {
            OutputError::UnknownFormat { .. } => true,
            OutputError::Create { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::NotADirectory
            ),
            OutputError::Write { .. } | OutputError::Read { .. } | OutputError::Encoder { .. } => {
                false
            }
        }
    }
}

impl crate::error::Classify for OutputError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

/// The kind of file written, chosen from the output name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Sparse raw image: runs of zero blocks are holes.
    Raw,
    /// Multi-block `.xz` (24 MiB blocks, CRC64), like Raspberry Pi OS images.
    Xz,
    /// Multi-threaded zstd frame with content size and checksum.
    Zstd,
}

impl Format {
    /// The format a name asks for: `*.xz` is xz, `*.zst` is zstd, anything else (`*.img`) raw.
    /// Names ending in another compression suffix (`.gz`, `.zip`, `.bz2`) are refused.
    pub fn from_path(path: &Path) -> Result<Self, OutputError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".xz") {
            Ok(Format::Xz)
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            Ok(Format::Zstd)
        } else if name.is_empty()
            || [".gz", ".zip", ".bz2", ".lz4", ".7z", ".tar"]
                .iter()
                .any(|s| name.ends_with(s))
        {
            Err(OutputError::UnknownFormat {
                path: path.to_path_buf(),
            })
        } else {
            Ok(Format::Raw)
        }
    }

    /// Lowercase name, as in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
        }
    }
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    /// Final path.
    pub path: PathBuf,
    /// How the file is encoded.
    pub format: Format,
    /// Length in bytes of the file written (for `.img`, the image size).
    pub bytes: u64,
    /// SHA-256 of the file written, hex (what `sha256sum OUT` prints).
    pub sha256: String,
    /// Length in bytes of the raw image inside.
    pub raw_bytes: u64,
    /// SHA-256 of the raw image inside, hex; `None` when the route that wrote the file never saw
    /// every raw byte (an `.img.xz` patched from an `.img.xz` base copies untouched blocks
    /// compressed).
    pub raw_sha256: Option<String>,
}

impl Written {
    /// A raw image of `len` bytes at `path` whose SHA-256 is `sha256` (file and image are one).
    pub fn raw(path: &Path, len: u64, sha256: String) -> Self {
        Written {
            path: path.to_path_buf(),
            format: Format::Raw,
            bytes: len,
            sha256: sha256.clone(),
            raw_bytes: len,
            raw_sha256: Some(sha256),
        }
    }
}

/// Write `disk` to `dest` in the format its name asks for (see [`Format::from_path`]).
pub fn write(disk: &CowDisk, dest: &Path, progress: &dyn Progress) -> Result<Written, OutputError> {
    match Format::from_path(dest)? {
        Format::Raw => raw::write(disk, dest, progress),
        Format::Xz => xz::write(disk, dest, progress),
        Format::Zstd => zstd::write(disk, dest, progress),
    }
}

/// A temporary file beside `dest`, renamed over it by [`Staged::finish`]; dropped unfinished, it
/// is removed.
pub(crate) struct Staged {
    dest: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl Staged {
    /// Create the temporary file in `dest`'s directory.
    pub(crate) fn new(dest: &Path) -> Result<Self, OutputError> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix(".pibake-").suffix(".partial");
        // An image is a file like any other the user makes: 0666 less the umask, not the 0600
        // a temporary file gets by default.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        #[cfg(unix)]
        sweep_stale(&dir);
        let tmp = builder
            .tempfile_in(&dir)
            .map_err(|source| OutputError::Create {
                path: dest.to_path_buf(),
                source,
            })?;
        // Held while the file is being written, so a later run can tell a partial output of a
        // live process from one a killed process left (see `sweep_stale`). A filesystem without
        // locks only loses that sweep. Unix only: Windows locks are mandatory and would refuse
        // the writes made through the file's second handle.
        #[cfg(unix)]
        let _ = tmp.as_file().try_lock();
        Ok(Self {
            dest: dest.to_path_buf(),
            tmp,
        })
    }

    /// A second handle on the temporary file, for writing.
    pub(crate) fn file(&self) -> Result<File, OutputError> {
        self.tmp.reopen().map_err(|e| self.write_err(e))
    }

    /// A writer for the temporary file from its start, past the page cache where the system
    /// allows it (see `direct`): for outputs written front to back in one pass.
    pub(crate) fn sequential(&self) -> Result<direct::OutFile, OutputError> {
        Ok(direct::OutFile::open(self.tmp.path(), self.file()?))
    }

    /// The error for a failed write to this output.
    pub(crate) fn write_err(&self, source: io::Error) -> OutputError {
        OutputError::Write {
            path: self.dest.clone(),
            source,
        }
    }

    /// The error for a failed read of the image going into this output.
    pub(crate) fn read_err(&self, source: io::Error) -> OutputError {
        OutputError::Read {
            path: self.dest.clone(),
            source,
        }
    }

    /// The final path.
    pub(crate) fn dest(&self) -> &Path {
        &self.dest
    }

    /// Sync the data and rename the file to its final name.
    pub(crate) fn finish(self, file: File) -> Result<(), OutputError> {
        file.sync_all().map_err(|e| self.write_err(e))?;
        drop(file);
        let dest = self.dest.clone();
        self.tmp.persist(&dest).map_err(|e| OutputError::Write {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }
}

#[cfg(unix)]
/// How old an unlocked partial output must be before it is taken for a killed process's: far
/// longer than a writer takes between creating its file and locking it.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Remove the partial outputs in `dir` that killed processes left: `.pibake-*.partial` files
/// that nobody holds locked and that have not been written for a while. A SIGKILL (or a power
/// cut) skips every destructor, and a CI job retried after a timeout would otherwise pile up
/// images of gigabytes. Failures are ignored: this is tidying, not correctness.
#[cfg(unix)]
fn sweep_stale(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".pibake-") && name.ends_with(".partial")) {
            continue;
        }
        let path = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if !old {
            continue;
        }
        let Ok(f) = File::options().write(true).open(&path) else {
            continue;
        };
        if f.try_lock().is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// A writer that hashes and counts everything passing through to `inner`.
pub(crate) struct Hashing<W> {
    pub(crate) inner: W,
    sha: Sha256,
    count: u64,
}

impl<W> Hashing<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            sha: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written and their SHA-256, hex.
    pub(crate) fn finish(self) -> (W, u64, String) {
        (self.inner, self.count, hex::encode(self.sha.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Stream the whole of `disk` into `sink`, hashing it on a helper thread; returns the raw
/// image's SHA-256. Errors are tagged: `Err(Ok(e))` a read of the image failed, `Err(Err(e))`
/// the sink failed.
pub(crate) fn stream_disk(
    disk: &CowDisk,
    sink: &mut dyn Write,
    what: &str,
    progress: &dyn Progress,
) -> Result<String, Result<io::Error, io::Error>> {
    let len = disk.len();
    progress.begin(what, Some(len));
    let ((), sha) = hash_behind::with_background_hash(READ_STEP, |feed| {
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(READ_STEP as u64) as usize;
            let mut buf = feed.buffer();
            disk.read_at(pos, &mut buf[..n]).map_err(Ok)?;
            sink.write_all(&buf[..n]).map_err(Err)?;
            feed.hash(buf, n);
            pos += n as u64;
            progress.set(pos);
        }
        Ok(())
    })?;
    progress.end();
    Ok(sha)
}

/// Stream `disk` through `encoder` (which writes into `staged`'s file through [`Hashing`]),
/// finish it with `finish`, and rename the file into place: the shared body of the `.img.xz`
/// and `.img.zst` writers.
pub(crate) fn write_encoded<E: Write>(
    disk: &CowDisk,
    staged: Staged,
    mut encoder: E,
    finish: impl FnOnce(E) -> io::Result<Hashing<io::BufWriter<File>>>,
    format: Format,
    what: &str,
    progress: &dyn Progress,
) -> Result<Written, OutputError> {
    let raw_sha = stream_disk(disk, &mut encoder, what, progress).map_err(|e| match e {
        Ok(read) => staged.read_err(read),
        Err(write) => staged.write_err(write),
    })?;
    let sink = finish(encoder).map_err(|e| staged.write_err(e))?;
    let (buffered, bytes, sha256) = sink.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| staged.write_err(e.into_error()))?;
    let path = staged.dest().to_path_buf();
    staged.finish(file)?;
    Ok(Written {
        path,
        format,
        bytes,
        sha256,
        raw_bytes: disk.len(),
        raw_sha256: Some(raw_sha),
    })
}

/// Worker threads for the compressors: every core, at least one.
pub(crate) fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_picks_the_format() {
        let f = |s: &str| Format::from_path(Path::new(s));
        assert_eq!(f("out/master.img").unwrap(), Format::Raw);
        assert_eq!(f("master.IMG.XZ").unwrap(), Format::Xz);
        assert_eq!(f("master.img.zst").unwrap(), Format::Zstd);
        assert_eq!(f("master").unwrap(), Format::Raw);
        let e = f("master.img.gz").unwrap_err();
        assert!(e.is_bad_input());
        assert!(e.to_string().contains(".img.xz"));
    }
}
