//! Which blocks of an ext4 are free, from its block bitmaps, minus every block that is
//! metadata wherever it sits (superblock and descriptor copies, bitmaps, inode tables).

use std::io;
use std::ops::Range;

use super::layout::{Layout, SUPERBLOCK_AT};
use crate::fs::ReadAt;
use crate::fs::le::{le16, le32};
use crate::fs::ranges::{normalize, subtract};

/// `bg_flags`: the group's block bitmap was never initialised (all free).
const BG_BLOCK_UNINIT: u64 = 0x2;

/// Free byte ranges, relative to the partition, of the ext4 in `part`; `None` when its layout
/// is not one this reader models (the partition then counts as data throughout).
pub fn free_ranges(part: &dyn ReadAt) -> io::Result<Option<Vec<Range<u64>>>> {
    let mut sb = [0u8; 1024];
    if part.len() < SUPERBLOCK_AT + 1024 {
        return Ok(None);
    }
    part.read_at(SUPERBLOCK_AT, &mut sb)?;
    let Some(l) = Layout::parse(&sb, part.len()) else {
        return Ok(None);
    };
    let bs = l.block_size;
    let gdt_blocks = l.gdt_bytes().div_ceil(bs);
    // The table is allocated by what the superblock says: it must fit in the partition first.
    let gdt_at = (l.first_data + 1) * bs;
    if gdt_at.saturating_add(l.gdt_bytes()) > part.len() {
        return Ok(None);
    }
    let mut gdt = vec![0u8; l.gdt_bytes() as usize];
    part.read_at(gdt_at, &mut gdt)?;

    let mut meta = Vec::new();
    let mut bitmaps = Vec::with_capacity(l.groups() as usize);
    for g in 0..l.groups() {
        let ds = l.desc_size;
        let d = &gdt[(g * ds) as usize..((g + 1) * ds) as usize];
        let hi = |at: usize| {
            if l.is64 && ds >= 64 {
                le32(d, at) << 32
            } else {
                0
            }
        };
        let block_bitmap = le32(d, 0x00) | hi(0x20);
        let inode_bitmap = le32(d, 0x04) | hi(0x24);
        let inode_table = le32(d, 0x08) | hi(0x28);
        let flags = le16(d, 0x12);
        // Descriptors come from the image: one placing metadata past the last block (or past
        // 2^64) describes no layout this reader models.
        let Some(table_end) = inode_table
            .checked_add(l.itable_blocks)
            .filter(|&end| end <= l.blocks)
        else {
            return Ok(None);
        };
        if block_bitmap >= l.blocks || inode_bitmap >= l.blocks {
            return Ok(None);
        }
        meta.push(block_bitmap..block_bitmap + 1);
        meta.push(inode_bitmap..inode_bitmap + 1);
        meta.push(inode_table..table_end);
        let start = l.first_data + g * l.blocks_per_group;
        if l.has_super_backup(g) {
            meta.push(start..start + 1 + gdt_blocks + l.reserved_gdt);
        }
        let uninit = l.uninit_valid && flags & BG_BLOCK_UNINIT != 0;
        bitmaps.push((start, block_bitmap, uninit));
    }
    if meta.iter().any(|r| r.end > l.blocks) {
        return Ok(None);
    }

    let mut free = Vec::new();
    let mut bitmap = vec![0u8; bs as usize];
    for (start, block_bitmap, uninit) in bitmaps {
        let count = l.blocks_per_group.min(l.blocks - start);
        if uninit {
            free.push(start..start + count);
            continue;
        }
        part.read_at(block_bitmap * bs, &mut bitmap)?;
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
        free.into_iter().map(|r| r.start * bs..r.end * bs).collect(),
    ))
}
