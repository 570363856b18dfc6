//! Sparse raw images, written under a temporary name and renamed when complete.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::clone::{CloneMethod, clone_file};
use super::{Format, Staged};
use crate::disk::CowDisk;
use crate::disk::xz::{XzDev, XzError};
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
        raw_sha256: Some(sha),
    })
}

/// Write `disk` to `dest` starting from `copy`, a raw file already holding `disk`'s base: the
/// copy is cloned (a reflink where the filesystem can, else only its data extents), then only
/// the changed chunks are written. `known_sha256`, when given, is the result's SHA-256 already
/// established for exactly this base and these changes; otherwise the result is hashed.
pub fn write_from_copy(
    copy: &Path,
    disk: &CowDisk,
    dest: &Path,
    known_sha256: Option<&str>,
    progress: &dyn Progress,
) -> Result<(Written, CloneMethod), OutputError> {
    let staged = Staged::new(dest)?;
    let file = staged.file()?;
    let src = File::open(copy).map_err(|e| staged.read_err(e))?;
    let len = disk.len();
    if src.metadata().map_err(|e| staged.read_err(e))?.len() != len {
        return Err(staged.read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not the size of the base image", copy.display()),
        )));
    }
    progress.begin("copying the decoded base", None);
    let method = clone_file(&src, &file, len).map_err(|e| staged.write_err(e))?;
    progress.end();
    let mut buf = Vec::new();
    for r in disk.changed_ranges() {
        buf.resize((r.end - r.start) as usize, 0);
        disk.read_at(r.start, &mut buf)
            .map_err(|e| staged.read_err(e))?;
        write_all_at(&file, r.start, &buf).map_err(|e| staged.write_err(e))?;
    }
    let sha = match known_sha256 {
        Some(s) => s.to_string(),
        None => hash_file(&file, len, progress).map_err(|e| staged.read_err(e))?,
    };
    staged.finish(file)?;
    Ok((
        Written {
            path: dest.to_path_buf(),
            format: Format::Raw,
            bytes: len,
            sha256: sha.clone(),
            raw_bytes: len,
            raw_sha256: Some(sha),
        },
        method,
    ))
}

/// Write `disk` to `dest` from its multi-block `.xz` base in one pass: every block is decoded
/// once, in parallel, the changed chunks are laid over it, and the result is hashed and written
/// sparse. When `keep_base` is given, the base's own decoded bytes go there too (for the cache)
/// and their SHA-256 is returned beside what was written.
pub fn write_from_xz(
    xz: &XzDev,
    disk: &CowDisk,
    dest: &Path,
    keep_base: Option<&File>,
    progress: &dyn Progress,
) -> Result<(Written, Option<String>), OutputError> {
    let staged = Staged::new(dest)?;
    let file = staged.file()?;
    let len = disk.len();
    file.set_len(len).map_err(|e| staged.write_err(e))?;
    if let Some(k) = keep_base {
        k.set_len(len).map_err(|e| staged.write_err(e))?;
    }
    let changed = disk.changed_ranges();
    let mut next_change = 0usize;
    let mut out_sha = Sha256::new();
    let mut base_sha = keep_base.map(|_| Sha256::new());
    let mut edited = Vec::new();
    progress.begin("decoding and writing image", Some(len));
    let threads = super::threads() as usize;
    let decoded = xz.for_each_block(threads, |block, data| {
        let range = block.uncompressed_range();
        if let (Some(k), Some(h)) = (keep_base, base_sha.as_mut()) {
            h.update(data);
            write_sparse(k, range.start, data).map_err(Pass::Write)?;
        }
        while next_change < changed.len() && changed[next_change].end <= range.start {
            next_change += 1;
        }
        let mut bytes = data;
        let mut i = next_change;
        if i < changed.len() && changed[i].start < range.end {
            edited.clear();
            edited.extend_from_slice(data);
            while i < changed.len() && changed[i].start < range.end {
                let s = changed[i].start.max(range.start);
                let e = changed[i].end.min(range.end);
                let at = (s - range.start) as usize..(e - range.start) as usize;
                disk.read_at(s, &mut edited[at]).map_err(Pass::Read)?;
                i += 1;
            }
            bytes = &edited;
        }
        out_sha.update(bytes);
        write_sparse(&file, range.start, bytes).map_err(Pass::Write)?;
        progress.set(range.end);
        Ok::<(), Pass>(())
    });
    progress.end();
    decoded.map_err(|e| match e {
        Pass::Decode(e) => staged.read_err(e.into()),
        Pass::Read(e) => staged.read_err(e),
        Pass::Write(e) => staged.write_err(e),
    })?;
    let sha = hex::encode(out_sha.finalize());
    staged.finish(file)?;
    Ok((
        Written {
            path: dest.to_path_buf(),
            format: Format::Raw,
            bytes: len,
            sha256: sha.clone(),
            raw_bytes: len,
            raw_sha256: Some(sha),
        },
        base_sha.map(|h| hex::encode(h.finalize())),
    ))
}

/// What stopped a one-pass decode: the base, the edited disk, or the output.
enum Pass {
    Decode(XzError),
    Read(io::Error),
    Write(io::Error),
}

impl From<XzError> for Pass {
    fn from(e: XzError) -> Self {
        Pass::Decode(e)
    }
}

/// Write `data` at `offset`, leaving all-zero grains as holes (the file was sized beforehand,
/// so they read as zeros).
fn write_sparse(file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while let Some(start) = next_grain(data, off, true) {
        let end = next_grain(data, start, false).unwrap_or(data.len());
        write_all_at(file, offset + start as u64, &data[start..end])?;
        off = end;
    }
    Ok(())
}

#[cfg(unix)]
fn write_all_at(file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(data, offset)
}

#[cfg(not(unix))]
fn write_all_at(mut file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(data)
}

/// SHA-256 of the first `len` bytes of `file`, hex.
fn hash_file(mut file: &File, len: u64, progress: &dyn Progress) -> io::Result<String> {
    use std::io::Read;
    progress.begin("hashing image", Some(len));
    file.seek(SeekFrom::Start(0))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(BLOCK as u64) as usize;
        file.read_exact(&mut buf[..n])?;
        sha.update(&buf[..n]);
        pos += n as u64;
        progress.set(pos);
    }
    progress.end();
    Ok(hex::encode(sha.finalize()))
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
    let ((), sha) = super::hash_behind::with_background_hash(BLOCK, |feed| {
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(BLOCK as u64) as usize;
            let mut buf = feed.buffer();
            disk.read_at(pos, &mut buf[..n]).map_err(Ok)?;
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
            feed.hash(buf, n);
            pos += n as u64;
            progress.set(pos);
        }
        Ok(())
    })?;
    progress.end();
    Ok(sha)
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
