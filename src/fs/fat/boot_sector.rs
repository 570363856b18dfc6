//! The FAT boot sector's geometry: where the FATs, the root directory and the data clusters
//! are, and which FAT width (12, 16 or 32 bits) the cluster count implies.

use crate::fs::le::{le16, le32};

/// A FAT volume's layout, from its boot sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per sector.
    pub bytes_per_sector: u64,
    /// Sectors per cluster.
    pub sectors_per_cluster: u64,
    /// Sectors before the first FAT.
    pub reserved: u64,
    /// Sectors per FAT.
    pub fat_sectors: u64,
    /// First sector of the data area (cluster 2).
    pub data_start: u64,
    /// Data clusters.
    pub clusters: u64,
    /// FAT entry width in bits.
    pub bits: u64,
}

/// Whether `fatfs` can validate boot sector `bs` without overflowing: its checks compute the
/// first data sector (reserved + FATs × sectors per FAT + root directory) and the FAT's entry
/// count (sectors per FAT × bytes per sector × 8) in unchecked 32-bit arithmetic, so a hostile
/// BPB panics there (debug builds) or wraps past its checks (release builds).
pub(crate) fn fits_fatfs(bs: &[u8; 512]) -> bool {
    let bps = le16(bs, 11);
    if bps == 0 {
        return true; // fatfs refuses it before any arithmetic
    }
    let fat_sectors = match le16(bs, 22) {
        0 => le32(bs, 36),
        n => n,
    };
    let root_sectors = (le16(bs, 17) * 32).div_ceil(bps);
    let data_start = le16(bs, 14) + u64::from(bs[16]) * fat_sectors + root_sectors;
    data_start <= u64::from(u32::MAX) && fat_sectors * bps * 8 <= u64::from(u32::MAX)
}

impl Geometry {
    /// The geometry boot sector `bs` describes in a partition of `part_len` bytes, or `None`
    /// when it does not describe a FAT this reader trusts.
    pub fn parse(bs: &[u8; 512], part_len: u64) -> Option<Geometry> {
        let bps = le16(bs, 11);
        let spc = u64::from(bs[13]);
        let reserved = le16(bs, 14);
        let fats = u64::from(bs[16]);
        let root_entries = le16(bs, 17);
        let total = match le16(bs, 19) {
            0 => le32(bs, 32),
            n => n,
        };
        let fat_sectors = match le16(bs, 22) {
            0 => le32(bs, 36),
            n => n,
        };
        let valid = matches!(bps, 512 | 1024 | 2048 | 4096)
            && spc.is_power_of_two()
            && spc <= 128
            && reserved > 0
            && fats > 0
            && fat_sectors > 0
            && total.saturating_mul(bps) <= part_len;
        if !valid {
            return None;
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_start = reserved + fats * fat_sectors + root_sectors;
        if data_start >= total {
            return None;
        }
        let clusters = (total - data_start) / spc;
        let bits = if clusters < 4085 {
            12
        } else if clusters < 65525 {
            16
        } else {
            32
        };
        Some(Geometry {
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            reserved,
            fat_sectors,
            data_start,
            clusters,
            bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpb(fats: u8, fat_sectors_32: u32) -> [u8; 512] {
        let mut bs = [0u8; 512];
        bs[11..13].copy_from_slice(&512u16.to_le_bytes());
        bs[13] = 1;
        bs[14..16].copy_from_slice(&32u16.to_le_bytes());
        bs[16] = fats;
        bs[36..40].copy_from_slice(&fat_sectors_32.to_le_bytes());
        bs
    }

    #[test]
    fn fat_sizes_that_overflow_fatfs_are_caught() {
        assert!(fits_fatfs(&bpb(2, 1024)));
        assert!(
            !fits_fatfs(&bpb(2, u32::MAX / 2 + 1)),
            "FATs × size past 2^32"
        );
        assert!(!fits_fatfs(&bpb(1, 1 << 20)), "entry count past 2^32");
    }
}
