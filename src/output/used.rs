//! Which bytes of an image hold data: the complement of the blocks that the image's filesystems
//! record as free.
//!
//! Only free space that a filesystem vouches for is left out. Everything else counts as data:
//! the partition table and whatever precedes the first partition, gaps between partitions, the
//! backup GPT, partitions holding an unknown filesystem, an ext4 or FAT with a layout this module
//! does not model (it is then taken whole), and the tail of a partition past its filesystem's
//! end. The free-space maps (`fs::ext4::free`, `fs::fat::free`) read the on-disk structures
//! directly, not through a driver, so they see exactly what the image holds, including edits in
//! the copy-on-write layer.

use std::io;
use std::ops::Range;

use crate::disk::Image;
use crate::fs::Window;
pub(crate) use crate::fs::ranges::{complement, normalize};

/// Byte ranges of `image` that hold data, ascending, merged, not rounded.
pub(crate) fn data_ranges(image: &Image) -> io::Result<Vec<Range<u64>>> {
    let disk = &image.disk;
    let mut free = Vec::new();
    for p in &image.table.partitions {
        let part = Window::new(&**disk, p.offset(), p.bytes());
        let found = crate::fs::free_ranges(p.fs, &part)?;
        let at = p.offset();
        free.extend(
            found
                .unwrap_or_default()
                .into_iter()
                .map(|r| at + r.start..at + r.end),
        );
    }
    Ok(complement(normalize(free), disk.len()))
}
