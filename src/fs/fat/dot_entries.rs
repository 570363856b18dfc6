//! Repair of the `.` and `..` entries `fatfs` writes in new directories.

use crate::disk::Region;
use crate::fs::FsError;

const DIR_ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;
const DELETED: u8 = 0xe5;

/// fatfs 0.3 writes a long-name entry before the `.` and `..` entries of every directory it
/// creates, which the FAT specification forbids and `fsck.vfat` reports as damage; it also points
/// `..` of a top-level directory at the FAT32 root cluster where the specification says 0.
///
/// New directory clusters can only be among the chunks this transaction wrote, so those are
/// scanned for the exact signature (long-name entry, `.` directory entry, long-name entry, `..`
/// directory entry) at sector boundaries and rewritten as `.`, `..` and two deleted slots.
pub(super) fn repair_dot_entries(region: &Region) -> Result<(), FsError> {
    const SECTOR: u64 = 512;
    let mut bpb = [0u8; 512];
    region.read_at(0, &mut bpb)?;
    let root_cluster = u32::from_le_bytes([bpb[44], bpb[45], bpb[46], bpb[47]]);
    let is_fat32 = &bpb[82..87] == b"FAT32";
    let disk = region.disk();
    let chunk = crate::disk::cow::CHUNK as u64;
    let (start, end) = (region.start(), region.start() + region.len());
    for index in disk.touched() {
        let chunk_start = index * chunk;
        if chunk_start + chunk <= start || chunk_start >= end {
            continue;
        }
        let mut off = chunk_start.max(start);
        off = start + (off - start).div_ceil(SECTOR) * SECTOR;
        while off + 4 * DIR_ENTRY as u64 <= (chunk_start + chunk).min(end) {
            let mut head = [0u8; 4 * DIR_ENTRY];
            region.read_at(off - start, &mut head)?;
            let e = |i: usize| &head[i * DIR_ENTRY..(i + 1) * DIR_ENTRY];
            let is_lfn = |x: &[u8]| x[11] == ATTR_LFN;
            let is_named_dir =
                |x: &[u8], name: &[u8; 11]| &x[..11] == name && x[11] & ATTR_DIR != 0;
            if is_lfn(e(0))
                && is_named_dir(e(1), b".          ")
                && is_lfn(e(2))
                && is_named_dir(e(3), b"..         ")
            {
                let mut fixed = [0u8; 4 * DIR_ENTRY];
                fixed[..DIR_ENTRY].copy_from_slice(e(1));
                fixed[DIR_ENTRY..2 * DIR_ENTRY].copy_from_slice(e(3));
                let dotdot = &mut fixed[DIR_ENTRY..2 * DIR_ENTRY];
                let cluster = u32::from(u16::from_le_bytes([dotdot[26], dotdot[27]]))
                    | u32::from(u16::from_le_bytes([dotdot[20], dotdot[21]])) << 16;
                if is_fat32 && cluster == root_cluster {
                    dotdot[20..22].fill(0);
                    dotdot[26..28].fill(0);
                }
                // Deleted, not empty: a zero first byte would end the directory early.
                fixed[2 * DIR_ENTRY] = DELETED;
                fixed[3 * DIR_ENTRY] = DELETED;
                region.write_at(off - start, &fixed)?;
            }
            off += SECTOR;
        }
    }
    Ok(())
}
