//! Which clusters of a FAT volume are free, from its first FAT.

use std::io;
use std::ops::Range;

use super::boot_sector::Geometry;
use crate::fs::ReadAt;
use crate::fs::le::{le16, le32};

/// Free byte ranges, relative to the partition, of the FAT in `part`: its unallocated
/// clusters. `None` when the boot sector does not describe a FAT this reader trusts.
pub fn free_ranges(part: &dyn ReadAt) -> io::Result<Option<Vec<Range<u64>>>> {
    let mut bs = [0u8; 512];
    if part.len() < 512 {
        return Ok(None);
    }
    part.read_at(0, &mut bs)?;
    let Some(g) = Geometry::parse(&bs, part.len()) else {
        return Ok(None);
    };
    let bps = g.bytes_per_sector;
    let fat_bytes = g.fat_sectors * bps;
    let needed = ((g.clusters + 2) * g.bits).div_ceil(8);
    if needed > fat_bytes || fat_bytes > 256 << 20 {
        return Ok(None);
    }
    let mut fat = vec![0u8; needed as usize];
    part.read_at(g.reserved * bps, &mut fat)?;
    let entry = |c: u64| -> u64 {
        match g.bits {
            12 => {
                let at = (c * 3 / 2) as usize;
                let v = le16(&fat, at);
                if c.is_multiple_of(2) {
                    v & 0xfff
                } else {
                    v >> 4
                }
            }
            16 => le16(&fat, (c * 2) as usize),
            _ => le32(&fat, (c * 4) as usize) & 0x0fff_ffff,
        }
    };
    let cluster_bytes = g.sectors_per_cluster * bps;
    let data = g.data_start * bps;
    let mut free = Vec::new();
    let mut run: Option<u64> = None;
    for c in 2..g.clusters + 2 {
        match (entry(c) == 0, run) {
            (true, None) => run = Some(c),
            (false, Some(s)) => {
                free.push(s..c);
                run = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run {
        free.push(s..g.clusters + 2);
    }
    Ok(Some(
        free.into_iter()
            .map(|r| data + (r.start - 2) * cluster_bytes..data + (r.end - 2) * cluster_bytes)
            .collect(),
    ))
}
