//! The superblock fields that place an ext4's metadata: block size, group geometry, descriptor
//! size, reserved GDT blocks, and whether backups are sparse. Parsed from the raw superblock
//! bytes, independently of the driver, so the free-space map sees exactly what the image holds.

use super::features::{
    COMPAT_RESIZE_INODE, COMPAT_SPARSE_SUPER2, INCOMPAT_64BIT, INCOMPAT_META_BG, RO_BIGALLOC,
    RO_GDT_CSUM, RO_METADATA_CSUM, RO_SPARSE_SUPER,
};
use crate::fs::le::{le16, le32};

/// Byte offset of the primary superblock in the partition.
pub const SUPERBLOCK_AT: u64 = 1024;
/// `s_magic`.
pub const MAGIC: u64 = 0xef53;

/// Where an ext4's groups and their metadata are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Block size in bytes.
    pub block_size: u64,
    /// Total blocks.
    pub blocks: u64,
    /// First data block (1 for 1 KiB blocks, else 0).
    pub first_data: u64,
    /// Blocks per group.
    pub blocks_per_group: u64,
    /// Inode-table blocks per group.
    pub itable_blocks: u64,
    /// Bytes per group descriptor.
    pub desc_size: u64,
    /// GDT blocks reserved for growth after each descriptor copy.
    pub reserved_gdt: u64,
    /// Descriptors have 64-bit halves.
    pub is64: bool,
    /// Backups only in groups 0, 1 and powers of 3, 5 and 7.
    pub sparse: bool,
    /// `BLOCK_UNINIT` flags can be trusted (checksummed descriptors).
    pub uninit_valid: bool,
}

impl Layout {
    /// The layout described by superblock bytes `sb` in a partition of `part_len` bytes, or
    /// `None` when it is not ext2/3/4 or uses a layout this reader does not model (meta_bg,
    /// bigalloc, sparse_super2) or does not fit the partition.
    pub fn parse(sb: &[u8; 1024], part_len: u64) -> Option<Layout> {
        if le16(sb, 0x38) != MAGIC {
            return None;
        }
        let log_bs = le32(sb, 0x18);
        if log_bs > 6 {
            return None;
        }
        let bs = 1024u64 << log_bs;
        let compat = le32(sb, 0x5c) as u32;
        let incompat = le32(sb, 0x60) as u32;
        let ro = le32(sb, 0x64) as u32;
        if incompat & INCOMPAT_META_BG != 0
            || ro & RO_BIGALLOC != 0
            || compat & COMPAT_SPARSE_SUPER2 != 0
        {
            return None;
        }
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let blocks = le32(sb, 0x04) | if is64 { le32(sb, 0x150) << 32 } else { 0 };
        let first_data = le32(sb, 0x14);
        let bpg = le32(sb, 0x20);
        let ipg = le32(sb, 0x28);
        let inode_size = le16(sb, 0x58).max(128);
        // As the kernel requires: a power of two up to 1 KiB (0, from older tools, means 32).
        let desc_size = if is64 { le16(sb, 0xfe).max(32) } else { 32 };
        if !desc_size.is_power_of_two() || desc_size > 1024 {
            return None;
        }
        if bpg == 0 || bpg > 8 * bs || blocks <= first_data || blocks.saturating_mul(bs) > part_len
        {
            return None;
        }
        Some(Layout {
            block_size: bs,
            blocks,
            first_data,
            blocks_per_group: bpg,
            itable_blocks: (ipg * inode_size).div_ceil(bs),
            desc_size,
            reserved_gdt: if compat & COMPAT_RESIZE_INODE != 0 {
                le16(sb, 0xce)
            } else {
                0
            },
            is64,
            sparse: ro & RO_SPARSE_SUPER != 0,
            uninit_valid: ro & (RO_GDT_CSUM | RO_METADATA_CSUM) != 0,
        })
    }

    /// Number of block groups.
    pub fn groups(&self) -> u64 {
        (self.blocks - self.first_data).div_ceil(self.blocks_per_group)
    }

    /// Bytes of the group descriptor table.
    pub fn gdt_bytes(&self) -> u64 {
        self.groups() * self.desc_size
    }

    /// Whether group `g` holds a copy of the superblock and group descriptors.
    pub fn has_super_backup(&self, g: u64) -> bool {
        has_super_backup(g, self.sparse)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups_follow_sparse_super() {
        let with: Vec<u64> = (0..30).filter(|&g| has_super_backup(g, true)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27]);
        assert!(has_super_backup(4, false));
    }
}
