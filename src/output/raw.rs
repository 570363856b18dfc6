//! Sparse raw images, written under a temporary name and renamed when complete.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Format, Staged};
use crate::disk::CowDisk;
use crate::progress::Progress;

pub use super::{OutputError, Written};

const BLOCK: usize = 1 << 20;
/// Zero runs of this size, aligned, become holes; it matches the file systems' block size.
const HOLE_GRAIN: usize = 4096;

/// Write `disk` (base plus changes) to `dest` as a sparse raw image.
///
/// The data goes to a temporary file beside `dest`, which is renamed over `dest` only when
/// complete and synced: a failure leaves nothing under the final name.
pub fn write(disk: &CowDisk, dest: &Path, progress: &dyn Progress) -> Result<Written, OutputError> {
    let staged = Staged::new(dest)?;
    let mut file = staged.file()?;
    let sha = copy_sparse(disk, &mut file, progress).map_err(|e| match e {
        Ok(read) => staged.read_err(read),
        Err(write) => staged.write_err(write),
    })?;
    staged.finish(file)?;
    Ok(Written {
        path: dest.to_path_buf(),
        format: Format::Raw,
        bytes: disk.len(),
        sha256: sha.clone(),
        raw_bytes: disk.len(),
        raw_sha256: sha,
    })
}

/// Copy `disk` into `file`, seeking over zero grains so they stay holes. `Err(Ok(_))` is a read
/// error of the image, `Err(Err(_))` a write error of the file.
fn copy_sparse(
    disk: &CowDisk,
    file: &mut File,
    progress: &dyn Progress,
) -> Result<String, Result<io::Error, io::Error>> {
    let len = disk.len();
    file.set_len(len).map_err(Err)?;
    progress.begin("writing image", Some(len));
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(BLOCK as u64) as usize;
        disk.read_at(pos, &mut buf[..n]).map_err(Ok)?;
        sha.update(&buf[..n]);
        // Write each run of non-zero grains with one call.
        let mut off = 0;
        while off < n {
            let data_start = match next_grain(&buf[..n], off, true) {
                Some(s) => s,
                None => break,
            };
            let data_end = next_grain(&buf[..n], data_start, false).unwrap_or(n);
            file.seek(SeekFrom::Start(pos + data_start as u64))
                .map_err(Err)?;
            file.write_all(&buf[data_start..data_end]).map_err(Err)?;
            off = data_end;
        }
        pos += n as u64;
        progress.set(pos);
    }
    progress.end();
    Ok(hex::encode(sha.finalize()))
}

/// Offset of the first grain at or after `from` that holds data (`data` true) or is all zero
/// (`data` false).
fn next_grain(buf: &[u8], from: usize, data: bool) -> Option<usize> {
    let mut at = from;
    while at < buf.len() {
        let end = (at + HOLE_GRAIN).min(buf.len());
        let has_data = buf[at..end].iter().any(|&b| b != 0);
        if has_data == data {
            return Some(at);
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grains_split_data_from_zeros() {
        let mut buf = vec![0u8; 5 * HOLE_GRAIN + 10];
        buf[HOLE_GRAIN + 3] = 1;
        buf[2 * HOLE_GRAIN] = 1;
        buf[5 * HOLE_GRAIN + 9] = 1;
        assert_eq!(next_grain(&buf, 0, true), Some(HOLE_GRAIN));
        assert_eq!(next_grain(&buf, HOLE_GRAIN, false), Some(3 * HOLE_GRAIN));
        assert_eq!(next_grain(&buf, 3 * HOLE_GRAIN, true), Some(5 * HOLE_GRAIN));
        assert_eq!(next_grain(&buf, 5 * HOLE_GRAIN, false), None);
    }
}
