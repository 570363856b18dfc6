//! Block maps in bmaptool's format 2.0: which 4 KiB blocks of an image hold data, with a SHA-256
//! per range and one over the map file itself.
//!
//! `bmaptool copy IMAGE DEVICE` (and `pibake flash`) write only the mapped blocks, so a card
//! takes the time of the data, not of the image size. The mapped blocks are everything the
//! filesystems use plus everything they do not describe (see [`mapped_ranges`]).
//!
//! The file checksum follows bmaptool's rule: the SHA-256 of the whole file as written, except
//! that the checksum's own 64 hex digits are all `0` while hashing.

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{OutputError, Staged, used};
use crate::disk::{CowDisk, Image};
use crate::progress::Progress;

/// Size of a bmap block in bytes.
pub const BLOCK_SIZE: u64 = 4096;

/// Why a block map could not be computed or read.
#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    /// Reading the image failed.
    #[error("reading {path} to map its blocks: {source}")]
    Io {
        /// The image the user named.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The bmap file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The bmap path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not a bmap pibake understands.
    #[error("{path}: not a usable bmap file: {detail}")]
    Invalid {
        /// The bmap path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The bmap describes a different image.
    #[error("{path} is for an image of {bmap} bytes, but the image is {image} bytes")]
    WrongImage {
        /// The bmap path.
        path: PathBuf,
        /// Image size recorded in the bmap.
        bmap: u64,
        /// Size of the image given.
        image: u64,
    },
}

impl BmapError {
    /// True when the user's file is at fault rather than the machine.
    pub fn is_bad_input(&self) -> bool {
        match self {
            BmapError::Io { .. } => false,
            BmapError::Unreadable { source, .. } => source.kind() == io::ErrorKind::NotFound,
            BmapError::Invalid { .. } | BmapError::WrongImage { .. } => true,
        }
    }
}

impl crate::error::Classify for BmapError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

/// Byte ranges of `image` that must be copied for an identical result, ascending and merged,
/// widened to whole [`BLOCK_SIZE`] blocks (the last may end at the image's end).
///
/// Mapped: everything before the first partition (tables, boot code) and between partitions;
/// on ext4, every block its block bitmaps mark in use, every group's bitmaps and inode table and
/// every superblock and descriptor copy (groups flagged `BLOCK_UNINIT` have no bitmap on disk
/// and hold nothing else); on FAT, the reserved sectors, the FATs, the FAT12/16 root directory
/// and every allocated cluster; and all of any partition or tail whose contents no filesystem
/// describes.
pub fn mapped_ranges(image: &Image) -> Result<Vec<Range<u64>>, BmapError> {
    let data = used::data_ranges(image).map_err(|source| BmapError::Io {
        path: image.source.clone(),
        source,
    })?;
    Ok(to_blocks(&data, image.disk.len()))
}

/// Widen byte ranges to whole blocks, clipped to `len`, merged.
fn to_blocks(ranges: &[Range<u64>], len: u64) -> Vec<Range<u64>> {
    let widened = ranges
        .iter()
        .map(|r| {
            let start = r.start / BLOCK_SIZE * BLOCK_SIZE;
            let end = r
                .end
                .div_ceil(BLOCK_SIZE)
                .saturating_mul(BLOCK_SIZE)
                .min(len);
            start..end
        })
        .collect();
    used::normalize(widened)
}

/// One range of a block map: bytes of the image and their SHA-256 (hex) when recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    /// Byte range in the image.
    pub bytes: Range<u64>,
    /// SHA-256 of those bytes, hex, if the map records one.
    pub sha256: Option<String>,
}

/// A parsed or written block map.
#[derive(Debug, Clone)]
pub struct Bmap {
    /// Size of the image it describes, in bytes.
    pub image_size: u64,
    /// Block size, in bytes.
    pub block_size: u64,
    /// Mapped ranges, ascending.
    pub ranges: Vec<MappedRange>,
}

impl Bmap {
    /// Blocks in the image (the last may be partial).
    pub fn blocks(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    /// Blocks in the mapped ranges.
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| r.bytes.end.div_ceil(self.block_size) - r.bytes.start / self.block_size)
            .sum()
    }

    /// Bytes in the mapped ranges.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| r.bytes.end - r.bytes.start)
            .sum()
    }
}

/// What [`write()`] produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BmapWritten {
    /// Final path.
    pub path: PathBuf,
    /// Length of the bmap file.
    pub bytes: u64,
    /// SHA-256 of the bmap file, hex.
    pub sha256: String,
    /// Blocks in the image.
    pub blocks: u64,
    /// Blocks mapped.
    pub mapped_blocks: u64,
}

/// Where [`write_sharing`] cuts mapped ranges, so that most pieces are left as the base has them.
const SHARE_PIECE: u64 = 64 << 20;

/// The hashes of ranges no edit touched, remembered for the next image over the same base: the
/// nodes of a cluster share most of their mapped bytes, so each is hashed once, not per node.
#[derive(Debug, Default)]
pub struct BaseHashes(std::sync::Mutex<std::collections::HashMap<(u64, u64), String>>);

/// Hash each of `ranges` of `disk` and write the block map to `dest` (temporary name, then
/// rename). `ranges` must be ascending, non-overlapping and block-aligned, as
/// [`mapped_ranges`] returns them.
pub fn write(
    disk: &CowDisk,
    ranges: &[Range<u64>],
    dest: &Path,
    progress: &dyn Progress,
) -> Result<BmapWritten, OutputError> {
    write_sharing(disk, ranges, dest, None, progress)
}

/// [`write()`], taking the hash of every range the copy-on-write layer leaves as the base has
/// it from `shared` when it is there, and leaving it there otherwise. Every image given the
/// same `shared` must have the same base.
pub fn write_sharing(
    disk: &CowDisk,
    ranges: &[Range<u64>],
    dest: &Path,
    shared: Option<&BaseHashes>,
    progress: &dyn Progress,
) -> Result<BmapWritten, OutputError> {
    let changed = disk.changed_ranges();
    let untouched = |r: &Range<u64>| !changed.iter().any(|c| c.start < r.end && r.start < c.end);
    // Shared hashes pay off only for ranges no edit touched; cut long runs at fixed 64 MiB
    // boundaries (the same for every node whatever its edits) so an edit costs its piece only.
    let pieces: Vec<Range<u64>>;
    let ranges = if shared.is_some() {
        pieces = ranges
            .iter()
            .flat_map(|r| {
                let mut v = Vec::new();
                let mut at = r.start;
                while at < r.end {
                    let next = ((at / SHARE_PIECE) + 1) * SHARE_PIECE;
                    v.push(at..next.min(r.end));
                    at = next.min(r.end);
                }
                v
            })
            .collect();
        &pieces[..]
    } else {
        ranges
    };
    let memo = |r: &Range<u64>| {
        let map = shared?.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(r.start, r.end)).cloned()
    };
    let staged = Staged::new(dest)?;
    let len = disk.len();
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    progress.begin("hashing mapped blocks", Some(total));
    let mut done = 0;
    let mut hashed = Vec::with_capacity(ranges.len());
    let mut buf = vec![0u8; 4 << 20];
    for r in ranges {
        if r.start % BLOCK_SIZE != 0 || (r.end % BLOCK_SIZE != 0 && r.end != len) || r.end > len {
            return Err(staged.read_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {}..{} is not block-aligned within the image",
                    r.start, r.end
                ),
            )));
        }
        let base_bytes = shared.is_some() && untouched(r);
        if base_bytes && let Some(known) = memo(r) {
            done += r.end - r.start;
            progress.set(done);
            hashed.push(MappedRange {
                bytes: r.clone(),
                sha256: Some(known),
            });
            continue;
        }
        let mut sha = Sha256::new();
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(buf.len() as u64) as usize;
            disk.read_at(at, &mut buf[..n])
                .map_err(|e| staged.read_err(e))?;
            sha.update(&buf[..n]);
            at += n as u64;
            done += n as u64;
            progress.set(done);
        }
        let sum = hex::encode(sha.finalize());
        if base_bytes && let Some(shared) = shared {
            let mut map = shared.0.lock().unwrap_or_else(|p| p.into_inner());
            map.insert((r.start, r.end), sum.clone());
        }
        hashed.push(MappedRange {
            bytes: r.clone(),
            sha256: Some(sum),
        });
    }
    progress.end();
    let bmap = Bmap {
        image_size: len,
        block_size: BLOCK_SIZE,
        ranges: hashed,
    };
    let text = render(&bmap);
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let mut file = staged.file()?;
    file.write_all(text.as_bytes())
        .map_err(|e| staged.write_err(e))?;
    staged.finish(file)?;
    Ok(BmapWritten {
        path: dest.to_path_buf(),
        bytes: text.len() as u64,
        sha256,
        blocks: bmap.blocks(),
        mapped_blocks: bmap.mapped_blocks(),
    })
}

const ZERO_SUM: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The XML text of `bmap`, with its file checksum filled in.
pub fn render(bmap: &Bmap) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mapped = bmap.mapped_blocks();
    let percent = if bmap.blocks() == 0 {
        0.0
    } else {
        mapped as f64 * 100.0 / bmap.blocks() as f64
    };
    let mut s = String::new();
    s.push_str("<?xml version=\"1.0\" ?>\n");
    s.push_str(
        "<!-- Block map written by pibake. It lists the blocks of the image that hold data:\n     \
         partition tables, filesystem metadata, files and directories. Only these blocks need\n     \
         to be written to a card (bmaptool copy, pibake flash); the others are free space.\n     \
         Format 2.0 as bmaptool defines it: each Range is 'first-last' (inclusive block\n     \
         numbers) with the SHA-256 of its bytes; BmapFileChecksum is the SHA-256 of this file\n     \
         with that checksum's own digits replaced by zeros. -->\n",
    );
    s.push_str("<bmap version=\"2.0\">\n");
    s.push_str(&format!(
        "    <!-- Image size in bytes: {:.1} MiB -->\n    <ImageSize> {} </ImageSize>\n\n",
        mib(bmap.image_size),
        bmap.image_size
    ));
    s.push_str(&format!(
        "    <!-- Size of a block in bytes -->\n    <BlockSize> {} </BlockSize>\n\n",
        bmap.block_size
    ));
    s.push_str(&format!(
        "    <!-- Count of blocks in the image file -->\n    <BlocksCount> {} </BlocksCount>\n\n",
        bmap.blocks()
    ));
    s.push_str(&format!(
        "    <!-- Count of mapped blocks: {:.1} MiB or {:.1}% -->\n    <MappedBlocksCount> {} </MappedBlocksCount>\n\n",
        mib(mapped * bmap.block_size),
        percent,
        mapped
    ));
    s.push_str(
        "    <!-- Type of checksum used in this file -->\n    <ChecksumType> sha256 </ChecksumType>\n\n",
    );
    s.push_str(&format!(
        "    <!-- Checksum of this file, computed with these digits all zero -->\n    <BmapFileChecksum> {ZERO_SUM} </BmapFileChecksum>\n\n"
    ));
    s.push_str("    <!-- The mapped block ranges and the SHA-256 of each -->\n    <BlockMap>\n");
    for r in &bmap.ranges {
        let first = r.bytes.start / bmap.block_size;
        let last = r.bytes.end.div_ceil(bmap.block_size) - 1;
        let blocks = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        match &r.sha256 {
            Some(sum) => s.push_str(&format!(
                "        <Range chksum=\"{sum}\"> {blocks} </Range>\n"
            )),
            None => s.push_str(&format!("        <Range> {blocks} </Range>\n")),
        }
    }
    s.push_str("    </BlockMap>\n</bmap>\n");
    let sum = hex::encode(Sha256::digest(s.as_bytes()));
    s.replacen(ZERO_SUM, &sum, 1)
}

/// Read the bmap at `path` for an image of `image_size` bytes, checking its file checksum.
pub fn read(path: &Path, image_size: u64) -> Result<Bmap, BmapError> {
    let text = std::fs::read_to_string(path).map_err(|source| BmapError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let bmap = parse(&text).map_err(|detail| BmapError::Invalid {
        path: path.to_path_buf(),
        detail,
    })?;
    if bmap.image_size != image_size {
        return Err(BmapError::WrongImage {
            path: path.to_path_buf(),
            bmap: bmap.image_size,
            image: image_size,
        });
    }
    Ok(bmap)
}

/// Parse bmap XML (format 1.x or 2.x). SHA-256 range checksums are kept, others ignored; a
/// SHA-256 file checksum, when present, must match.
pub fn parse(text: &str) -> Result<Bmap, String> {
    let body = strip_comments(text);
    let version = between(&body, "<bmap version=\"", "\"").ok_or("no <bmap version=...>")?;
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .ok_or_else(|| format!("bad version {version:?}"))?;
    if major > 2 {
        return Err(format!("format version {version} is newer than 2.x"));
    }
    let number = |tag: &str| -> Result<u64, String> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        between(&body, &open, &close)
            .ok_or_else(|| format!("no <{tag}>"))?
            .trim()
            .parse()
            .map_err(|_| format!("<{tag}> is not a number"))
    };
    let image_size = number("ImageSize")?;
    let block_size = number("BlockSize")?;
    if block_size == 0 || block_size % 512 != 0 {
        return Err(format!("block size {block_size} is not a multiple of 512"));
    }
    let checksum_type = between(&body, "<ChecksumType>", "</ChecksumType>")
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let sha256 = major >= 2 && checksum_type == "sha256";
    if sha256 && let Some(sum) = between(text, "<BmapFileChecksum>", "</BmapFileChecksum>") {
        let sum = sum.trim();
        let zeroed = text.replacen(sum, &"0".repeat(sum.len()), 1);
        let actual = hex::encode(Sha256::digest(zeroed.as_bytes()));
        if !actual.eq_ignore_ascii_case(sum) {
            return Err(format!(
                "the file checksum does not match (recorded {sum}, computed {actual}): the file is damaged or was edited"
            ));
        }
    }
    let map = between(&body, "<BlockMap>", "</BlockMap>").ok_or("no <BlockMap>")?;
    let blocks = image_size.div_ceil(block_size);
    let mut ranges = Vec::new();
    let mut rest = map;
    while let Some(open) = rest.find("<Range") {
        rest = &rest[open + "<Range".len()..];
        let tag_end = rest.find('>').ok_or("unterminated <Range>")?;
        let attrs = &rest[..tag_end];
        // The closing tag is looked for after the opening one ends: `<Range</Range>` has its
        // only `>` inside it.
        let close = rest[tag_end..]
            .find("</Range>")
            .map(|at| tag_end + at)
            .ok_or("unterminated <Range>")?;
        let inner = rest[tag_end + 1..close].trim();
        rest = &rest[close + "</Range>".len()..];
        let (first, last) = match inner.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (inner, inner),
        };
        let first: u64 = first.parse().map_err(|_| format!("bad range {inner:?}"))?;
        let last: u64 = last.parse().map_err(|_| format!("bad range {inner:?}"))?;
        if first > last || last >= blocks {
            return Err(format!(
                "range {inner:?} is outside the image's {blocks} blocks"
            ));
        }
        let sum = if sha256 {
            between(attrs, "chksum=\"", "\"").map(|s| s.trim().to_ascii_lowercase())
        } else {
            None
        };
        let start = first * block_size;
        // `last` is below `blocks`, but its end may pass 2^64 for an image size just below it.
        let end = ((last + 1).saturating_mul(block_size)).min(image_size);
        if ranges
            .last()
            .is_some_and(|prev: &MappedRange| prev.bytes.end > start)
        {
            return Err(format!(
                "range {inner:?} overlaps or precedes the one before"
            ));
        }
        ranges.push(MappedRange {
            bytes: start..end,
            sha256: sum,
        });
    }
    Ok(Bmap {
        image_size,
        block_size,
        ranges,
    })
}

/// The text between the first `open` and the `close` after it.
fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("<!--") {
        out.push_str(&rest[..open]);
        match rest[open..].find("-->") {
            Some(close) => rest = &rest[open + close + 3..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bmap {
        Bmap {
            image_size: 10 * 4096 + 100,
            block_size: 4096,
            ranges: vec![
                MappedRange {
                    bytes: 0..8192,
                    sha256: Some("ab".repeat(32)),
                },
                MappedRange {
                    bytes: 5 * 4096..6 * 4096,
                    sha256: Some("cd".repeat(32)),
                },
                MappedRange {
                    bytes: 10 * 4096..10 * 4096 + 100,
                    sha256: None,
                },
            ],
        }
    }

    #[test]
    fn render_then_parse_round_trips_and_checks_itself() {
        let b = sample();
        let text = render(&b);
        assert!(text.contains("<Range chksum=\"abab"));
        assert!(text.contains("> 0-1 </Range>"));
        assert!(text.contains("> 5 </Range>"));
        assert!(text.contains("<BlocksCount> 11 </BlocksCount>"));
        assert!(text.contains("<MappedBlocksCount> 4 </MappedBlocksCount>"));
        assert!(!text.contains(ZERO_SUM));
        let back = parse(&text).unwrap();
        assert_eq!(back.ranges, b.ranges);
        assert_eq!(back.image_size, b.image_size);
        let damaged = text.replacen("> 5 </Range>", "> 6 </Range>", 1);
        assert!(parse(&damaged).unwrap_err().contains("checksum"));
    }

    #[test]
    fn a_range_tag_closed_before_it_opens_is_refused() {
        let head = "<bmap version=\"1.4\"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>";
        let text = format!("{head}<BlockMap><Range</Range></BlockMap></bmap>");
        assert!(parse(&text).unwrap_err().contains("unterminated"));
        let huge = format!(
            "<bmap version=\"1.4\"><ImageSize>{}</ImageSize><BlockSize>4096</BlockSize>\
             <BlockMap><Range>{}</Range></BlockMap></bmap>",
            u64::MAX - 1,
            u64::MAX / 4096
        );
        assert_eq!(parse(&huge).unwrap().ranges[0].bytes.end, u64::MAX - 1);
    }

    #[test]
    fn blocks_are_widened_and_clipped() {
        assert_eq!(
            to_blocks(&[10..20, 4096..4097, 9000..9100], 9050),
            vec![0..9050]
        );
        assert_eq!(
            to_blocks(&[10..20, 9000..9100], 20_000),
            vec![0..4096, 8192..12288]
        );
    }
}
