//! Partition tables (MBR as Raspberry Pi OS ships, GPT for custom images) and what each holds.

use std::io;

use serde::Serialize;

use super::region::Region;

/// Sector size of every image pibake reads: Raspberry Pi OS images use 512-byte sectors.
pub const SECTOR: u64 = 512;

/// Which kind of partition table the disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// DOS label, as every Raspberry Pi OS image has.
    Mbr,
    /// GUID partition table behind a protective MBR.
    Gpt,
}

/// The filesystem found at the start of a partition, by its magic numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// FAT12/16/32 (the boot partition).
    Vfat,
    /// ext2/3/4 (the root partition).
    Ext4,
    /// Nothing pibake recognises.
    Unknown,
}

impl FsKind {
    /// Human name as shown by `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Vfat => "vfat",
            FsKind::Ext4 => "ext4",
            FsKind::Unknown => "unknown",
        }
    }
}

/// One partition: where it is and what it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    /// 1-based number, as in `/dev/mmcblk0p1`.
    pub index: u32,
    /// MBR type byte (`0x0c`) or GPT type GUID, lowercase.
    #[serde(rename = "type")]
    pub type_id: String,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// Filesystem found by probing the partition's first bytes.
    pub fs: FsKind,
    /// Filesystem label, when the filesystem has one.
    pub label: Option<String>,
    /// What `root=PARTUUID=` names: `<disk id>-NN` on MBR, the partition GUID on GPT.
    pub partuuid: String,
}

impl Partition {
    /// Byte offset of the first sector.
    pub fn offset(&self) -> u64 {
        self.start * SECTOR
    }

    /// Length in bytes.
    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// The disk's partition table.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionTable {
    /// MBR or GPT.
    #[serde(rename = "table")]
    pub kind: TableKind,
    /// MBR disk signature as 8 hex digits, or the GPT disk GUID.
    pub disk_id: String,
    /// Used entries, in table order.
    pub partitions: Vec<Partition>,
}

/// Why a partition table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// The image is smaller than one sector.
    #[error("the file is {0} bytes, too small to hold a partition table")]
    TooSmall(u64),
    /// No 0x55AA signature at byte 510.
    #[error(
        "no partition table: the boot signature 0x55AA is missing at byte 510 (is this a disk image?)"
    )]
    NoSignature,
    /// The MBR exists but holds no partitions.
    #[error("the partition table is empty")]
    Empty,
    /// A partition extends past the end of the file.
    #[error(
        "partition {index} ends at byte {end} but the image is only {len} bytes (truncated download or damaged table)"
    )]
    PastEnd {
        /// Partition number.
        index: u32,
        /// Byte after its last sector.
        end: u64,
        /// Image length.
        len: u64,
    },
    /// Two partitions share sectors, or one covers the partition table itself: editing one
    /// would write into the other.
    #[error(
        "partition {index} (sectors {start}..{end}) overlaps {other}; the partition table is damaged or crafted, and pibake will not edit a partition whose sectors belong to another"
    )]
    Overlap {
        /// Partition number.
        index: u32,
        /// Its first sector.
        start: u64,
        /// The sector after its last.
        end: u64,
        /// What it overlaps: another partition, or the table.
        other: String,
    },
    /// A GPT header or entry array that does not check out.
    #[error("the GPT is unreadable: {0}")]
    BadGpt(String),
    /// The MBR is malformed.
    #[error("the MBR is unreadable: {0}")]
    BadMbr(String),
    /// Reading the image failed.
    #[error("reading the partition table: {0}")]
    Io(#[from] io::Error),
}

impl crate::error::Classify for PartitionError {
    fn kind(&self) -> crate::error::Kind {
        match self {
            PartitionError::Io(_) => crate::error::Kind::Environment,
            _ => crate::error::Kind::BadInput,
        }
    }
}

const MBR_PROTECTIVE: u8 = 0xee;

/// Write MBR disk identifier `id` (8 hex digits, as [`PartitionTable::disk_id`] shows it) into
/// the disk's first sector: the 4 little-endian bytes at offset 440 that `PARTUUID=` names.
pub fn set_mbr_disk_id(disk: &crate::disk::CowDisk, id: &str) -> std::io::Result<()> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("disk id {id:?}"));
    let n = u32::from_str_radix(id, 16).map_err(|_| bad())?;
    if id.len() != 8 {
        return Err(bad());
    }
    disk.write_at(440, &n.to_le_bytes())
}

/// Read the partition table of `disk` (a region spanning the whole disk) and probe each partition.
pub fn read(disk: &Region) -> Result<PartitionTable, PartitionError> {
    let len = disk.len();
    if len < SECTOR {
        return Err(PartitionError::TooSmall(len));
    }
    let mut sector0 = [0u8; SECTOR as usize];
    disk.read_at(0, &mut sector0)?;
    if sector0[510..512] != [0x55, 0xaa] {
        return Err(PartitionError::NoSignature);
    }
    check_primaries(&sector0)?;
    let mut cursor = disk.clone();
    let mbr = mbrman::MBR::read_from(&mut cursor, SECTOR as u32)
        .map_err(|e| PartitionError::BadMbr(e.to_string()))?;
    let protective = mbr.iter().any(|(_, p)| p.sys == MBR_PROTECTIVE);
    let mut table = if protective {
        read_gpt(disk)?
    } else {
        let disk_id = hex::encode(
            mbr.header
                .disk_signature
                .iter()
                .rev()
                .copied()
                .collect::<Vec<_>>(),
        );
        let partitions = mbr
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(i, p)| Partition {
                index: i as u32,
                type_id: format!("0x{:02x}", p.sys),
                start: u64::from(p.starting_lba),
                sectors: u64::from(p.sectors),
                fs: FsKind::Unknown,
                label: None,
                partuuid: format!("{disk_id}-{i:02}"),
            })
            .collect();
        PartitionTable {
            kind: TableKind::Mbr,
            disk_id,
            partitions,
        }
    };
    if table.partitions.is_empty() {
        return Err(PartitionError::Empty);
    }
    for p in &table.partitions {
        let end = p
            .start
            .checked_add(p.sectors)
            .and_then(|e| e.checked_mul(SECTOR))
            .unwrap_or(u64::MAX);
        if end > len || p.sectors == 0 {
            return Err(PartitionError::PastEnd {
                index: p.index,
                end,
                len,
            });
        }
    }
    check_overlaps(&table)?;
    for p in &mut table.partitions {
        let (fs, label) = probe(disk, p.offset(), p.bytes())?;
        p.fs = fs;
        p.label = label;
    }
    Ok(table)
}

/// Refuse partitions that share sectors with each other or with the table (sector 0 for an MBR;
/// sectors 0-33 at least for a GPT, whose own header says where its usable area starts, which
/// gptman has checked the entries against).
fn check_overlaps(table: &PartitionTable) -> Result<(), PartitionError> {
    // An MBR extended partition is a container: the logical partitions lie inside it.
    let container = |p: &&Partition| {
        table.kind == TableKind::Mbr && matches!(p.type_id.as_str(), "0x05" | "0x0f" | "0x85")
    };
    let mut spans: Vec<(u64, u64, u32)> = table
        .partitions
        .iter()
        .filter(|p| !container(p))
        .map(|p| (p.start, p.start + p.sectors, p.index))
        .collect();
    spans.sort_unstable();
    let table_end = match table.kind {
        TableKind::Mbr => 1,
        TableKind::Gpt => 34,
    };
    if let Some(&(start, end, index)) = spans.first()
        && start < table_end
    {
        return Err(PartitionError::Overlap {
            index,
            start,
            end,
            other: "the partition table".into(),
        });
    }
    for w in spans.windows(2) {
        let ((_, a_end, a), (start, end, index)) = (w[0], w[1]);
        if start < a_end {
            return Err(PartitionError::Overlap {
                index,
                start,
                end,
                other: format!("partition {a}"),
            });
        }
    }
    Ok(())
}

/// Refuse a used primary entry that starts at sector 0, on top of the table itself, before
/// `mbrman` sees it: its alignment guess panics when every used partition starts there.
fn check_primaries(sector0: &[u8; SECTOR as usize]) -> Result<(), PartitionError> {
    for (i, e) in sector0[446..510].chunks_exact(16).enumerate() {
        let (sys, lba) = (e[4], u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
        if sys != 0 && lba == 0 {
            return Err(PartitionError::BadMbr(format!(
                "partition {} starts at sector 0, over the partition table",
                i + 1
            )));
        }
    }
    Ok(())
}

fn read_gpt(disk: &Region) -> Result<PartitionTable, PartitionError> {
    let mut cursor = disk.clone();
    let gpt = gptman::GPT::read_from(&mut cursor, SECTOR)
        .map_err(|e| PartitionError::BadGpt(e.to_string()))?;
    let partitions = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(i, p)| Partition {
            index: i,
            type_id: guid(&p.partition_type_guid),
            start: p.starting_lba,
            sectors: p.ending_lba.saturating_sub(p.starting_lba) + 1,
            fs: FsKind::Unknown,
            label: None,
            partuuid: guid(&p.unique_partition_guid),
        })
        .collect();
    Ok(PartitionTable {
        kind: TableKind::Gpt,
        disk_id: guid(&gpt.header.disk_guid),
        partitions,
    })
}

/// Format a GUID as stored on disk (first three fields little-endian) in its usual text form.
fn guid(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

const EXT4_MAGIC_OFFSET: u64 = 1024 + 56;
const EXT4_LABEL_OFFSET: u64 = 1024 + 120;

/// Identify the filesystem at `offset` from its magic numbers and read its label.
fn probe(disk: &Region, offset: u64, len: u64) -> io::Result<(FsKind, Option<String>)> {
    if len >= 2048 {
        let mut magic = [0u8; 2];
        disk.read_at(offset + EXT4_MAGIC_OFFSET, &mut magic)?;
        if u16::from_le_bytes(magic) == 0xef53 {
            let mut label = [0u8; 16];
            disk.read_at(offset + EXT4_LABEL_OFFSET, &mut label)?;
            return Ok((FsKind::Ext4, text_label(&label)));
        }
    }
    if len >= SECTOR {
        let mut boot = [0u8; SECTOR as usize];
        disk.read_at(offset, &mut boot)?;
        if boot[510..512] == [0x55, 0xaa] {
            // FAT32 keeps its type string and label further in than FAT12/16.
            if &boot[82..87] == b"FAT32" {
                return Ok((FsKind::Vfat, text_label(&boot[71..82])));
            }
            if &boot[54..57] == b"FAT" {
                return Ok((FsKind::Vfat, text_label(&boot[43..54])));
            }
        }
    }
    Ok((FsKind::Unknown, None))
}

fn text_label(raw: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim_end_matches(['\0', ' ']);
    (!s.is_empty() && s != "NO NAME").then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_over_the_table_is_refused() {
        let mut disk = vec![0u8; 64 << 10];
        disk[510..512].copy_from_slice(&[0x55, 0xaa]);
        // Entry 1: type 0x83, starting at sector 0, 16 sectors.
        disk[446 + 4] = 0x83;
        disk[446 + 12] = 16;
        let dev = std::sync::Arc::new(crate::disk::device::MemDev(disk));
        let cow = std::sync::Arc::new(crate::disk::CowDisk::new(dev));
        let region = Region::new(cow.clone(), 0, cow.len(), false).unwrap();
        let err = read(&region).unwrap_err().to_string();
        assert!(err.contains("starts at sector 0"), "{err}");
    }

    #[test]
    fn guid_text_matches_the_mixed_endian_layout() {
        // Bytes of C12A7328-F81F-11D2-BA4B-00A0C93EC93B (the EFI system partition type) on disk.
        let raw = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(guid(&raw), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }
}
