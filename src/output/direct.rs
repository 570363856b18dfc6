//! Writing a large output file past the page cache.
//!
//! Every output is synced before it is renamed into place, so its bytes go to the disk before
//! the build ends whatever the write path. Through the page cache they are copied twice (into
//! the cache, then out to the disk), and a cluster build that writes ten images of a gigabyte
//! each also pushes the base out of the cache. On Linux, [`OutFile`] writes whole, aligned
//! buffers with `O_DIRECT` instead, and only the short tail through the cache. Where the
//! filesystem refuses `O_DIRECT` (tmpfs, some network filesystems) and on other systems it is an
//! ordinary buffered writer.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Bytes handed to the kernel per direct write.
const DIRECT_BUF: usize = 4 << 20;

/// What direct writes must be aligned to, in memory, file offset and length: the largest logical
/// block size in common use.
const ALIGN: usize = 4096;

/// A file being written from start to end, directly where the system allows it.
pub(crate) enum OutFile {
    /// Aligned buffers written with `O_DIRECT`.
    #[cfg(target_os = "linux")]
    Direct(Direct),
    /// Through the page cache.
    Buffered(BufWriter<File>),
}

impl OutFile {
    /// Open `path` (which exists and is empty) for writing; `fallback` is a handle on the same
    /// file, used when direct writes are not available.
    pub(crate) fn open(path: &Path, fallback: File) -> OutFile {
        #[cfg(target_os = "linux")]
        if let Some(d) = Direct::open(path) {
            return OutFile::Direct(d);
        }
        let _ = path;
        OutFile::Buffered(BufWriter::with_capacity(1 << 20, fallback))
    }

    /// Write what is still buffered and hand back the file, for syncing.
    pub(crate) fn finish(self) -> io::Result<File> {
        match self {
            #[cfg(target_os = "linux")]
            OutFile::Direct(d) => d.finish(),
            OutFile::Buffered(b) => b.into_inner().map_err(|e| e.into_error()),
        }
    }
}

impl Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            #[cfg(target_os = "linux")]
            OutFile::Direct(d) => d.write(buf),
            OutFile::Buffered(b) => b.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            // Only whole aligned buffers can go out directly; the rest waits for `finish`.
            OutFile::Direct(_) => Ok(()),
            OutFile::Buffered(b) => b.flush(),
        }
    }
}

/// `O_DIRECT` writes from an aligned buffer.
#[cfg(target_os = "linux")]
pub(crate) struct Direct {
    file: File,
    /// Room for [`DIRECT_BUF`] bytes starting at an [`ALIGN`]ed address, at `start`.
    mem: Vec<u8>,
    start: usize,
    /// Bytes buffered.
    len: usize,
    /// Bytes already in the file.
    pos: u64,
    /// Whether direct writes still work; after the first refusal everything is buffered.
    direct: bool,
}

#[cfg(target_os = "linux")]
impl Direct {
    fn open(path: &Path) -> Option<Direct> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        let mem = vec![0u8; DIRECT_BUF + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        (start < ALIGN).then_some(Direct {
            file,
            mem,
            start,
            len: 0,
            pos: 0,
            direct: true,
        })
    }

    /// Write buffered bytes `from..to` at their place in the file, directly while that works.
    fn put(&mut self, from: usize, to: usize) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let bytes = &self.mem[self.start + from..self.start + to];
        let at = self.pos;
        if self.direct && bytes.len().is_multiple_of(ALIGN) {
            match self.file.write_all_at(bytes, at) {
                Ok(()) => {
                    self.pos += bytes.len() as u64;
                    return Ok(());
                }
                // The filesystem or device wants another alignment: the rest goes through the
                // page cache, this buffer included (rewritten at the same offset).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.buffered()?,
                Err(e) => return Err(e),
            }
        } else if self.direct {
            self.buffered()?;
        }
        let bytes = &self.mem[self.start + from..self.start + to];
        self.file.write_all_at(bytes, at)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Turn `O_DIRECT` off for the rest of the file.
    fn buffered(&mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this struct owns, with integer arguments only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let (at, start) = (self.len, self.start);
            let n = data.len().min(DIRECT_BUF - at);
            self.mem[start + at..start + at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == DIRECT_BUF {
                self.put(0, DIRECT_BUF)?;
                self.len = 0;
            }
        }
        Ok(total)
    }

    fn finish(mut self) -> io::Result<File> {
        // The whole blocks of the tail directly, the rest (rarely aligned) through the cache.
        let aligned = self.len / ALIGN * ALIGN;
        if aligned > 0 {
            self.put(0, aligned)?;
        }
        if self.len > aligned {
            self.put(aligned, self.len)?;
        }
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write `data` in uneven pieces through an OutFile on `dir` and read it back.
    fn round_trip(dir: &Path, data: &[u8]) -> Vec<u8> {
        let path = dir.join("out");
        let f = File::create(&path).unwrap();
        let mut out = OutFile::open(&path, f);
        let mut rest = data;
        let mut step = 1usize;
        while !rest.is_empty() {
            let n = step.min(rest.len());
            out.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            step = step * 7 % 3_000_001 + 1;
        }
        out.flush().unwrap();
        out.finish().unwrap().sync_all().unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn every_length_comes_back_whole() {
        // On the test machine's disk (direct where it works) and on whatever tmpfs /dev/shm is.
        let dirs = [tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap()]
            .into_iter()
            .chain(tempfile::tempdir_in("/dev/shm").ok());
        for dir in dirs {
            for len in [
                0,
                1,
                ALIGN - 1,
                ALIGN,
                DIRECT_BUF,
                DIRECT_BUF + ALIGN + 3,
                9_999_999,
            ] {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                assert!(
                    round_trip(dir.path(), &data) == data,
                    "{len} bytes in {}",
                    dir.path().display()
                );
            }
        }
    }
}
