//! Which bytes of an image hold data: the complement of the blocks that the image's filesystems
//! record as free.
//!
//! Only free space that a filesystem vouches for is left out. Everything else counts as data:
//! the partition table and whatever precedes the first partition, gaps between partitions, the
//! backup GPT, partitions holding an unknown filesystem, an ext4 or FAT with a layout this module
//! does not model (it is then taken whole), and the tail of a partition past its filesystem's
//! end. Reading uses the on-disk structures directly, not a driver, so it sees exactly what the
//! image holds, including edits in the copy-on-write layer.

use std::io;
use std::ops::Range;

use crate::disk::{CowDisk, FsKind, Image};

/// Byte ranges of `image` that hold data, ascending, merged, not rounded.
pub(crate) fn data_ranges(image: &Image) -> io::Result<Vec<Range<u64>>> {
    let disk = &image.disk;
    let mut free = Vec::new();
    for p in &image.table.partitions {
        let part = Part {
            disk,
            offset: p.offset(),
            len: p.bytes(),
        };
        let found = match p.fs {
            FsKind::Ext4 => ext4_free(&part)?,
            FsKind::Vfat => fat_free(&part)?,
            FsKind::Unknown => None,
        };
        free.extend(found.unwrap_or_default());
    }
    Ok(complement(normalize(free), disk.len()))
}

/// A partition's bytes on the disk.
struct Part<'a> {
    disk: &'a CowDisk,
    offset: u64,
    len: u64,
}

impl Part<'_> {
    fn read(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        if at.saturating_add(buf.len() as u64) > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "filesystem structure past the partition end",
            ));
        }
        self.disk.read_at(self.offset + at, buf)
    }

    /// A free byte range relative to the partition, as an absolute range on the disk.
    fn abs(&self, r: Range<u64>) -> Range<u64> {
        self.offset + r.start..self.offset + r.end
    }
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// Sort and merge overlapping or touching ranges; drop empty ones.
pub(crate) fn normalize(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.retain(|r| r.start < r.end);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// `[0, len)` minus the normalized ranges `holes`.
pub(crate) fn complement(holes: Vec<Range<u64>>, len: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = 0;
    for h in holes {
        let h = h.start.min(len)..h.end.min(len);
        if h.start > at {
            out.push(at..h.start);
        }
        at = at.max(h.end);
    }
    if at < len {
        out.push(at..len);
    }
    out
}

/// `a` minus `b`, both normalized.
fn subtract(a: Vec<Range<u64>>, b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let mut start = r.start;
        while j < b.len() && b[j].end <= start {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].start < r.end {
            if b[k].start > start {
                out.push(start..b[k].start);
            }
            start = start.max(b[k].end);
            k += 1;
        }
        if start < r.end {
            out.push(start..r.end);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// ext2/3/4

const EXT4_SB: u64 = 1024;
const COMPAT_RESIZE_INODE: u64 = 0x10;
const COMPAT_SPARSE_SUPER2: u64 = 0x200;
const INCOMPAT_META_BG: u64 = 0x10;
const INCOMPAT_64BIT: u64 = 0x80;
const RO_SPARSE_SUPER: u64 = 0x1;
const RO_GDT_CSUM: u64 = 0x10;
const RO_BIGALLOC: u64 = 0x200;
const RO_METADATA_CSUM: u64 = 0x400;
const BG_BLOCK_UNINIT: u64 = 0x2;

/// Free byte ranges (absolute) of the ext4 in `part`, or `None` when its layout is not one this
/// reader models (the partition then counts as data throughout).
fn ext4_free(part: &Part) -> io::Result<Option<Vec<Range<u64>>>> {
    let mut sb = [0u8; 1024];
    if part.len < EXT4_SB + 1024 {
        return Ok(None);
    }
    part.read(EXT4_SB, &mut sb)?;
    if le16(&sb, 0x38) != 0xef53 {
        return Ok(None);
    }
    let log_bs = le32(&sb, 0x18);
    if log_bs > 6 {
        return Ok(None);
    }
    let bs = 1024u64 << log_bs;
    let compat = le32(&sb, 0x5c);
    let incompat = le32(&sb, 0x60);
    let ro = le32(&sb, 0x64);
    if incompat & INCOMPAT_META_BG != 0
        || ro & RO_BIGALLOC != 0
        || compat & COMPAT_SPARSE_SUPER2 != 0
    {
        return Ok(None);
    }
    let is64 = incompat & INCOMPAT_64BIT != 0;
    let blocks = le32(&sb, 0x04) | if is64 { le32(&sb, 0x150) << 32 } else { 0 };
    let first_data = le32(&sb, 0x14);
    let bpg = le32(&sb, 0x20);
    let ipg = le32(&sb, 0x28);
    let inode_size = le16(&sb, 0x58).max(128);
    let desc_size = if is64 { le16(&sb, 0xfe).max(32) } else { 32 };
    let reserved_gdt = if compat & COMPAT_RESIZE_INODE != 0 {
        le16(&sb, 0xce)
    } else {
        0
    };
    let uninit_valid = ro & (RO_GDT_CSUM | RO_METADATA_CSUM) != 0;
    if bpg == 0 || bpg > 8 * bs || blocks <= first_data || blocks.saturating_mul(bs) > part.len {
        return Ok(None);
    }
    let groups = (blocks - first_data).div_ceil(bpg);
    let gdt_bytes = groups * desc_size;
    let gdt_blocks = gdt_bytes.div_ceil(bs);
    let mut gdt = vec![0u8; gdt_bytes as usize];
    part.read((first_data + 1) * bs, &mut gdt)?;
    let itable_blocks = (ipg * inode_size).div_ceil(bs);
    let sparse = ro & RO_SPARSE_SUPER != 0;

    // Blocks that are metadata wherever they sit, whatever a bitmap says: superblock and group
    // descriptor copies, every group's bitmaps and inode table. Free space never includes them.
    let mut meta = Vec::new();
    let mut bitmaps = Vec::with_capacity(groups as usize);
    for g in 0..groups {
        let d = &gdt[(g * desc_size) as usize..((g + 1) * desc_size) as usize];
        let hi = |at: usize| {
            if is64 && desc_size >= 64 {
                le32(d, at) << 32
            } else {
                0
            }
        };
        let block_bitmap = le32(d, 0x00) | hi(0x20);
        let inode_bitmap = le32(d, 0x04) | hi(0x24);
        let inode_table = le32(d, 0x08) | hi(0x28);
        let flags = le16(d, 0x12);
        meta.push(block_bitmap..block_bitmap + 1);
        meta.push(inode_bitmap..inode_bitmap + 1);
        meta.push(inode_table..inode_table + itable_blocks);
        let start = first_data + g * bpg;
        if has_super_backup(g, sparse) {
            meta.push(start..start + 1 + gdt_blocks + reserved_gdt);
        }
        let uninit = uninit_valid && flags & BG_BLOCK_UNINIT != 0;
        bitmaps.push((start, block_bitmap, uninit));
    }
    if meta.iter().any(|r| r.end > blocks) {
        return Ok(None);
    }

    let mut free = Vec::new();
    let mut bitmap = vec![0u8; bs as usize];
    for (start, block_bitmap, uninit) in bitmaps {
        let count = bpg.min(blocks - start);
        if uninit {
            free.push(start..start + count);
            continue;
        }
        part.read(block_bitmap * bs, &mut bitmap)?;
        let mut run: Option<u64> = None;
        for i in 0..count {
            let used = bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;
            match (used, run) {
                (false, None) => run = Some(i),
                (true, Some(s)) => {
                    free.push(start + s..start + i);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            free.push(start + s..start + count);
        }
    }
    let free = subtract(normalize(free), &normalize(meta));
    Ok(Some(
        free.into_iter()
            .map(|r| part.abs(r.start * bs..r.end * bs))
            .collect(),
    ))
}

/// Whether group `g` holds a copy of the superblock and group descriptors.
fn has_super_backup(g: u64, sparse: bool) -> bool {
    if !sparse || g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

// ---------------------------------------------------------------------------------------------
// FAT12/16/32

/// Free byte ranges (absolute) of the FAT in `part`: its unallocated clusters. `None` when the
/// boot sector does not describe a FAT this reader trusts.
fn fat_free(part: &Part) -> io::Result<Option<Vec<Range<u64>>>> {
    let mut bs = [0u8; 512];
    if part.len < 512 {
        return Ok(None);
    }
    part.read(0, &mut bs)?;
    let bps = le16(&bs, 11);
    let spc = u64::from(bs[13]);
    let reserved = le16(&bs, 14);
    let fats = u64::from(bs[16]);
    let root_entries = le16(&bs, 17);
    let total = match le16(&bs, 19) {
        0 => le32(&bs, 32),
        n => n,
    };
    let fat_sectors = match le16(&bs, 22) {
        0 => le32(&bs, 36),
        n => n,
    };
    let valid = matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && spc <= 128
        && reserved > 0
        && fats > 0
        && fat_sectors > 0
        && total.saturating_mul(bps) <= part.len;
    if !valid {
        return Ok(None);
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let data_start = reserved + fats * fat_sectors + root_sectors;
    if data_start >= total {
        return Ok(None);
    }
    let clusters = (total - data_start) / spc;
    let bits = if clusters < 4085 {
        12
    } else if clusters < 65525 {
        16
    } else {
        32
    };
    let fat_bytes = fat_sectors * bps;
    let needed = ((clusters + 2) * bits).div_ceil(8);
    if needed > fat_bytes || fat_bytes > 256 << 20 {
        return Ok(None);
    }
    let mut fat = vec![0u8; needed as usize];
    part.read(reserved * bps, &mut fat)?;
    let entry = |c: u64| -> u64 {
        match bits {
            12 => {
                let at = (c * 3 / 2) as usize;
                let v = le16(&fat, at);
                if c % 2 == 0 { v & 0xfff } else { v >> 4 }
            }
            16 => le16(&fat, (c * 2) as usize),
            _ => le32(&fat, (c * 4) as usize) & 0x0fff_ffff,
        }
    };
    let cluster_bytes = spc * bps;
    let data = data_start * bps;
    let mut free = Vec::new();
    let mut run: Option<u64> = None;
    for c in 2..clusters + 2 {
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
        free.push(s..clusters + 2);
    }
    Ok(Some(
        free.into_iter()
            .map(|r| {
                part.abs(data + (r.start - 2) * cluster_bytes..data + (r.end - 2) * cluster_bytes)
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_algebra() {
        assert_eq!(
            normalize(vec![5..7, 0..2, 2..3, 6..9, 4..4]),
            vec![0..3, 5..9]
        );
        assert_eq!(complement(vec![0..3, 5..9], 12), vec![3..5, 9..12]);
        let one: Vec<std::ops::Range<u64>> = std::iter::once(2..20).collect();
        assert_eq!(
            complement(one, 12),
            std::iter::once(0..2).collect::<Vec<_>>()
        );
        assert_eq!(
            subtract(vec![0..10, 20..30], &[2..3, 8..22, 29..40]),
            vec![0..2, 3..8, 22..29]
        );
    }

    #[test]
    fn backup_groups_follow_sparse_super() {
        let with: Vec<u64> = (0..30).filter(|&g| has_super_backup(g, true)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27]);
        assert!(has_super_backup(4, false));
    }
}
