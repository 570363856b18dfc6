//! Sparse raw images, written under a temporary name and renamed when complete.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::disk::CowDisk;
use crate::progress::Progress;

const BLOCK: usize = 1 << 20;
const HOLE_GRAIN: usize = 4096;

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
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    /// Final path.
    pub path: PathBuf,
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole image, hex.
    pub sha256: String,
}

/// Write `disk` (base plus changes) to `dest` as a sparse raw image.
///
/// The data goes to a temporary file beside `dest`, which is renamed over `dest` only when
/// complete and synced: a failure leaves nothing under the final name.
pub fn write(disk: &CowDisk, dest: &Path, progress: &dyn Progress) -> Result<Written, OutputError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let create = |source| OutputError::Create {
        path: dest.to_path_buf(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".pibake-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(create)?;
    let fail = |source| OutputError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let mut file = tmp.reopen().map_err(fail)?;
    let sha = copy_sparse(disk, &mut file, progress).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    tmp.persist(dest).map_err(|e| fail(e.error))?;
    Ok(Written {
        path: dest.to_path_buf(),
        bytes: disk.len(),
        sha256: sha,
    })
}

fn copy_sparse(disk: &CowDisk, file: &mut File, progress: &dyn Progress) -> io::Result<String> {
    let len = disk.len();
    file.set_len(len)?;
    progress.begin("writing image", Some(len));
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(BLOCK as u64) as usize;
        disk.read_at(pos, &mut buf[..n])?;
        sha.update(&buf[..n]);
        let mut off = 0;
        for grain in buf[..n].chunks(HOLE_GRAIN) {
            if grain.iter().any(|&b| b != 0) {
                file.seek(SeekFrom::Start(pos + off as u64))?;
                file.write_all(grain)?;
            }
            off += grain.len();
        }
        pos += n as u64;
        progress.set(pos);
    }
    progress.end();
    Ok(hex::encode(sha.finalize()))
}
