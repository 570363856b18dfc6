//! A multi-block `.xz` base read in place, as a [`BlockDev`]: [`crate::xz::XzReader`] decodes
//! only the blocks a read touches, and this is all `disk` adds to it.

use std::io;

use super::device::BlockDev;

pub use crate::xz::{
    DEFAULT_CACHE_BLOCKS, MAX_BLOCK, XzBlock, XzError, XzIndex, XzReader as XzDev, XzStream,
};

impl BlockDev for crate::xz::XzReader {
    fn len(&self) -> u64 {
        self.index().uncompressed_len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        crate::xz::XzReader::read_at(self, offset, buf)
    }
}
