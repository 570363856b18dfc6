//! A byte window of a [`CowDisk`] (a partition, or the whole disk), usable by the filesystem crates.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use super::cow::CowDisk;
use super::device::check_bounds;

/// `len` bytes of a disk from `start`, with its own cursor for the `std::io` traits.
#[derive(Clone)]
pub struct Region {
    disk: Arc<CowDisk>,
    start: u64,
    len: u64,
    writable: bool,
    pos: u64,
}

impl Region {
    /// A window of `disk`; `writable` false makes every write an error.
    pub fn new(disk: Arc<CowDisk>, start: u64, len: u64, writable: bool) -> io::Result<Self> {
        check_bounds(start, 0, disk.len())?;
        if start.checked_add(len).is_none_or(|end| end > disk.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("region at {start} of {len} bytes runs past the disk end"),
            ));
        }
        Ok(Self {
            disk,
            start,
            len,
            writable,
            pos: 0,
        })
    }

    /// The same window, refusing writes: for reads that must not change anything.
    pub fn read_only(&self) -> Self {
        Self {
            writable: false,
            pos: 0,
            ..self.clone()
        }
    }

    /// True when writes reach the copy-on-write layer.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The disk this window is part of.
    pub fn disk(&self) -> &Arc<CowDisk> {
        &self.disk
    }

    /// Byte offset of the window on the disk.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Size of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length window.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read at an offset relative to the window.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.len)?;
        self.disk.read_at(self.start + offset, buf)
    }

    /// Write at an offset relative to the window.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "this view of the image is read-only",
            ));
        }
        check_bounds(offset, data.len(), self.len)?;
        self.disk.write_at(self.start + offset, data)
    }
}

impl Read for Region {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Region {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.len.saturating_sub(self.pos);
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = room.min(buf.len() as u64) as usize;
        self.write_at(self.pos, &buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Region {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

/// The ext4 crate reaches the partition through this; its errors carry no context, so I/O
/// failures are reported as its generic I/O error.
impl fs_ext4::block_io::BlockDevice for Region {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> fs_ext4::Result<()> {
        Region::read_at(self, offset, buf).map_err(fs_ext4::Error::from)
    }

    fn size_bytes(&self) -> u64 {
        self.len
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> fs_ext4::Result<()> {
        Region::write_at(self, offset, buf).map_err(fs_ext4::Error::from)
    }

    fn is_writable(&self) -> bool {
        self.writable
    }
}
