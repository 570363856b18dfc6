//! Copy a file into another without rewriting what is shared: a reflink where the filesystem
//! can (Btrfs, XFS, bcachefs: the copy shares every block and costs nothing), else an in-kernel
//! copy of the data extents only (holes stay holes), else a plain read-and-write loop that skips
//! zero blocks. All three give the same bytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// How [`clone_file`] did the copy, for the manifest and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneMethod {
    /// The destination shares the source's blocks (copy-on-write at the filesystem level).
    Reflink,
    /// The kernel copied the data extents; holes were skipped.
    KernelCopy,
    /// Data read and written by pibake, zero blocks left as holes.
    ReadWrite,
}

/// Make `dst` (empty, opened for writing) a copy of `src`, `len` bytes long.
pub fn clone_file(src: &File, dst: &File, len: u64) -> io::Result<CloneMethod> {
    #[cfg(target_os = "linux")]
    {
        if linux::reflink(src, dst).is_ok() {
            return Ok(CloneMethod::Reflink);
        }
        if linux::copy_extents(src, dst, len)? {
            return Ok(CloneMethod::KernelCopy);
        }
    }
    read_write(src, dst, len)?;
    Ok(CloneMethod::ReadWrite)
}

/// The portable fallback: copy in 1 MiB steps, seeking over all-zero 4 KiB blocks.
fn read_write(mut src: &File, mut dst: &File, len: u64) -> io::Result<()> {
    const STEP: usize = 1 << 20;
    const GRAIN: usize = 4096;
    dst.set_len(len)?;
    src.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; STEP];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(STEP as u64) as usize;
        src.read_exact(&mut buf[..n])?;
        for (i, grain) in buf[..n].chunks(GRAIN).enumerate() {
            if grain.iter().any(|&b| b != 0) {
                dst.seek(SeekFrom::Start(pos + (i * GRAIN) as u64))?;
                dst.write_all(grain)?;
            }
        }
        pos += n as u64;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::io;
    use std::os::unix::io::AsRawFd;

    /// `FICLONE` from linux/fs.h: `_IOW(0x94, 9, int)`.
    const FICLONE: libc::c_ulong = 0x4004_9409;

    pub(super) fn reflink(src: &File, dst: &File) -> io::Result<()> {
        // SAFETY: both descriptors are open for the duration of the call (borrowed `File`s), and
        // FICLONE takes the source descriptor as its integer argument, reading no memory.
        let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Copy the data extents with `copy_file_range`, found with `SEEK_DATA`/`SEEK_HOLE`.
    /// `Ok(false)` when the kernel or filesystem cannot (nothing has been written then).
    pub(super) fn copy_extents(src: &File, dst: &File, len: u64) -> io::Result<bool> {
        dst.set_len(len)?;
        let (s, d) = (src.as_raw_fd(), dst.as_raw_fd());
        let mut pos: i64 = 0;
        let end = len as i64;
        let mut first = true;
        while pos < end {
            // SAFETY: lseek on an open descriptor reads no memory.
            let data = unsafe { libc::lseek(s, pos, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break; // only a hole remains
                }
                return if first { Ok(false) } else { Err(e) };
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(s, data, libc::SEEK_HOLE) };
            let hole = if hole < 0 { end } else { hole.min(end) };
            let mut off_in = data;
            let mut off_out = data;
            while off_in < hole {
                let want = (hole - off_in) as usize;
                // SAFETY: the offset pointers point at live locals for the duration of the call;
                // the descriptors are open.
                let n = unsafe { libc::copy_file_range(s, &mut off_in, d, &mut off_out, want, 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    let unsupported = matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL)
                    );
                    return if first && unsupported {
                        Ok(false)
                    } else {
                        Err(e)
                    };
                }
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                // Start writing this range to disk now, so the final fsync has little left to
                // wait for. Only a hint: its failure changes nothing.
                // SAFETY: an open descriptor and plain integers; no memory is passed.
                unsafe {
                    libc::sync_file_range(
                        d,
                        off_out - n as i64,
                        n as i64,
                        libc::SYNC_FILE_RANGE_WRITE,
                    )
                };
                first = false;
            }
            pos = hole;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse_source(dir: &std::path::Path) -> (File, Vec<u8>) {
        let mut model = vec![0u8; 3 << 20];
        for (i, b) in model[100_000..300_000].iter_mut().enumerate() {
            *b = (i % 253) as u8 + 1;
        }
        model[(3 << 20) - 1] = 7;
        let path = dir.join("src.img");
        let mut f = File::create(&path).unwrap();
        f.set_len(model.len() as u64).unwrap();
        f.seek(SeekFrom::Start(100_000)).unwrap();
        f.write_all(&model[100_000..300_000]).unwrap();
        f.seek(SeekFrom::Start((3 << 20) - 1)).unwrap();
        f.write_all(&[7]).unwrap();
        (File::open(&path).unwrap(), model)
    }

    #[test]
    fn every_method_copies_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, model) = sparse_source(dir.path());
        let out = dir.path().join("a.img");
        let dst = File::create(&out).unwrap();
        clone_file(&src, &dst, model.len() as u64).unwrap();
        assert!(std::fs::read(&out).unwrap() == model);

        let out = dir.path().join("b.img");
        let dst = File::create(&out).unwrap();
        read_write(&src, &dst, model.len() as u64).unwrap();
        assert!(std::fs::read(&out).unwrap() == model);
        // The fallback leaves the zero megabytes as holes.
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let blocks = std::fs::metadata(&out).unwrap().blocks() * 512;
            assert!(blocks < (1 << 20), "{blocks} bytes allocated");
        }
    }
}
