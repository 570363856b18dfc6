//! Sparse raw images, written under a temporary name and renamed when complete.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Staged;
use super::clone::{CloneMethod, clone_file};
use crate::disk::CowDisk;
use crate::progress::Progress;
use crate::xz::{XzError, XzReader};

pub use super::{OutputError, Written};

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
    Ok(Written::raw(dest, disk.len(), sha))
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
    // The result's bytes are `disk`'s: hash them on other threads while the copy is made.
    let (copied, hashed) = std::thread::scope(|s| {
        let hasher = known_sha256.is_none().then(|| {
            s.spawn(|| {
                super::stream_disk(disk, &mut io::sink(), "hashing", &crate::progress::Silent)
            })
        });
        progress.begin("copying the decoded base", None);
        let copied = copy_with_changes(&src, &file, disk);
        progress.end();
        let hashed = hasher.map(|h| {
            h.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        (copied, hashed)
    });
    let method = copied.map_err(|e| match e {
        Ok(read) => staged.read_err(read),
        Err(write) => staged.write_err(write),
    })?;
    let sha = match (known_sha256, hashed) {
        (Some(s), _) => s.to_string(),
        (None, Some(Ok(s))) => s,
        (None, Some(Err(Ok(e) | Err(e)))) => return Err(staged.read_err(e)),
        (None, None) => unreachable!("a hasher runs whenever no hash is known"),
    };
    staged.finish(file)?;
    Ok((Written::raw(dest, len, sha), method))
}

/// Clone `src` into `dst`, then write `disk`'s changed chunks over it. `Err(Ok(_))` is a read
/// error, `Err(Err(_))` a write error.
fn copy_with_changes(
    src: &File,
    dst: &File,
    disk: &CowDisk,
) -> Result<CloneMethod, Result<io::Error, io::Error>> {
    let method = clone_file(src, dst, disk.len()).map_err(Err)?;
    let mut buf = Vec::new();
    for r in disk.changed_ranges() {
        buf.resize((r.end - r.start) as usize, 0);
        disk.read_at(r.start, &mut buf).map_err(Ok)?;
        write_all_at(dst, r.start, &buf).map_err(Err)?;
    }
    Ok(method)
}

/// Write `disk` to `dest` from its multi-block `.xz` base in one pass: every block is decoded
/// once, in parallel, the changed chunks are laid over it, and the result is hashed and written
/// sparse.
pub fn write_from_xz(
    xz: &XzReader,
    disk: &CowDisk,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<Written, OutputError> {
    let staged = Staged::new(dest)?;
    let file = staged.file()?;
    let len = disk.len();
    file.set_len(len).map_err(|e| staged.write_err(e))?;
    let changed = disk.changed_ranges();
    let mut next_change = 0usize;
    let mut out_sha = Sha256::new();
    let mut edited = Vec::new();
    progress.begin("decoding and writing image", Some(len));
    let threads = super::threads() as usize;
    let decoded = xz.for_each_block(threads, |block, data| {
        let range = block.uncompressed_range();
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
    Ok(Written::raw(dest, len, sha))
}

/// Decode every block of `xz` in parallel into `file` (sized to fit; zero runs stay holes): the
/// decoded copy of a base, for the cache. Read errors are `Ok`, write errors `Err`, as in
/// `Staged`'s split.
pub fn decode_xz_to(
    xz: &XzReader,
    file: &File,
    progress: &dyn Progress,
) -> Result<(), Result<io::Error, io::Error>> {
    let len = xz.len();
    file.set_len(len).map_err(Err)?;
    progress.begin("decoding base", Some(len));
    let r = xz.for_each_block(super::threads() as usize, |block, data| {
        let start = block.uncompressed_range().start;
        write_sparse(file, start, data).map_err(Pass::Write)?;
        progress.set(start + data.len() as u64);
        Ok::<(), Pass>(())
    });
    progress.end();
    r.map_err(|e| match e {
        Pass::Decode(e) => Ok(e.into()),
        Pass::Read(e) => Ok(e),
        Pass::Write(e) => Err(e),
    })
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
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(data)
}

/// Copy `disk` into `file`, seeking over zero grains so they stay holes. `Err(Ok(_))` is a read
/// error of the image, `Err(Err(_))` a write error of the file.
fn copy_sparse(
    disk: &CowDisk,
    file: &mut File,
    progress: &dyn Progress,
) -> Result<String, Result<io::Error, io::Error>> {
    file.set_len(disk.len()).map_err(Err)?;
    let mut sink = SparseSink { file, pos: 0 };
    super::stream_disk(disk, &mut sink, "writing image", progress)
}

/// A writer that writes runs of data where they belong and leaves all-zero grains as holes in a
/// file already sized to hold everything.
struct SparseSink<'a> {
    file: &'a File,
    pos: u64,
}

impl Write for SparseSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_sparse(self.file, self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
