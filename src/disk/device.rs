//! The read-only block device a build starts from.

use std::fs::File;
use std::io;
use std::path::Path;

pub(crate) use crate::xz::{check_bounds, read_exact_at};

/// Random-access, read-only bytes: an image file, a decoded cache entry, later an `.xz` base.
pub trait BlockDev: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;

    /// True when the device holds no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` from `offset`; reading past the end is an error, never a short read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A file opened read-only. The base image is never opened any other way.
pub struct FileDev {
    file: File,
    len: u64,
}

impl FileDev {
    /// Open `path` for reading only.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

impl BlockDev for FileDev {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.len)?;
        read_exact_at(&self.file, offset, buf)
    }
}

/// An in-memory device, for tests and small synthetic images.
pub struct MemDev(pub Vec<u8>);

impl BlockDev for MemDev {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.len())?;
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}
