//! Random access into `.xz` images made of many independent blocks, as Raspberry Pi OS ships them.
//!
//! An `.xz` file ends with an index of every block's compressed and uncompressed size, so the
//! block holding any byte of the image can be found without reading what precedes it, and decoded
//! on its own. [`XzIndex`] reads those indexes (walking back from the end of the file, stream by
//! stream); [`XzDev`] is a [`BlockDev`] that decodes only the blocks a read touches and keeps the
//! last few; [`XzDev::for_each_block`] decodes the whole file on every core, in order, for
//! streaming it out.
//!
//! Every length and offset read from the file is checked against the file's size and the format's
//! limits before it is used; every stream header, index and footer is checked against its CRC32,
//! and every block against its own integrity check when it is decoded. A file holding one huge
//! block (xz run single-threaded without `--block-size`) gains nothing from random access and is
//! refused with [`XzError::NotRandomAccess`]; callers decode such a file whole.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};

use liblzma_sys as sys;

use super::device::{BlockDev, check_bounds, read_exact_at};

/// Decoded blocks an [`XzDev`] keeps by default: enough for filesystem code going back and forth
/// between metadata and data, small (4 × 24 MiB for Raspberry Pi OS) next to the image.
pub const DEFAULT_CACHE_BLOCKS: usize = 4;

/// Largest uncompressed block [`XzDev`] accepts: past it one small read decodes and holds hundreds
/// of MiB, and decoding the whole file once is the better deal.
pub const MAX_BLOCK: u64 = 256 << 20;

/// Bytes of small reads kept as 4 KiB pages after their block leaves the block cache.
///
/// Filesystem code rereads the same metadata (superblock, descriptors, bitmaps, inode tables,
/// directories) across many blocks of the image; without this, every reread of a block that
/// was evicted decodes 24 MiB again.
const PAGE_CACHE_BYTES: usize = 32 << 20;
const PAGE: usize = 4096;
/// Reads up to this size are remembered page by page; larger ones are streaming reads.
const SMALL_READ: usize = 64 << 10;

/// Largest index accepted: about a million blocks. Anything bigger is damage, not an image, and
/// would otherwise make a small file ask for a huge allocation.
const MAX_INDEX: u64 = 64 << 20;

const STREAM_HEADER_SIZE: u64 = 12;
const HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = *b"YZ";
/// The smallest stream: header, an index with no records, footer.
const MIN_STREAM: u64 = 2 * STREAM_HEADER_SIZE + 8;
/// Largest value of the format's variable-length integers (2^63 - 1).
const VLI_MAX: u64 = u64::MAX / 2;
/// Bounds the format puts on a block's Unpadded Size.
const UNPADDED_MIN: u64 = 5;
const UNPADDED_MAX: u64 = VLI_MAX & !3;
/// How much of the file's tail is scanned at once for stream padding.
const PADDING_SCAN: usize = 64 << 10;

/// Why an `.xz` file could not be read block by block.
#[derive(Debug, thiserror::Error)]
pub enum XzError {
    /// Reading the file failed, or memory for a block could not be had.
    #[error("reading the .xz file failed: {0}")]
    Io(#[from] io::Error),
    /// Stream headers, footers or indexes are damaged, truncated, or not `.xz` at all.
    #[error("not a valid .xz file (at byte {offset}): {reason}")]
    Format {
        /// Byte of the file where the problem was found.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// One block does not decode or does not match its integrity check.
    #[error(
        "xz block {index} (uncompressed offset {uncompressed_offset}, file offset {file_offset}) \
         is corrupt: {reason}"
    )]
    CorruptBlock {
        /// The block's number in the file, from 0.
        index: usize,
        /// Where its bytes start in the decoded image.
        uncompressed_offset: u64,
        /// Where its header starts in the file.
        file_offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is sound but laid out so that reading it at random would not pay off.
    #[error("the .xz file cannot be read at random: {reason}")]
    NotRandomAccess {
        /// Why, in a few words.
        reason: String,
    },
}

impl XzError {
    /// True when the file is at fault (damaged, truncated, not `.xz`), false for I/O trouble and
    /// for [`XzError::NotRandomAccess`], which only asks the caller to decode the file whole.
    pub fn is_bad_input(&self) -> bool {
        match self {
            XzError::Format { .. } | XzError::CorruptBlock { .. } => true,
            XzError::Io(_) | XzError::NotRandomAccess { .. } => false,
        }
    }
}

impl crate::error::Classify for XzError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

impl From<XzError> for io::Error {
    /// I/O errors pass through; the rest become `InvalidData` carrying the [`XzError`], so its
    /// message survives and a caller can still downcast to it.
    fn from(e: XzError) -> Self {
        match e {
            XzError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

fn format_err(offset: u64, reason: impl Into<String>) -> XzError {
    XzError::Format {
        offset,
        reason: reason.into(),
    }
}

/// One block of an `.xz` file: where its bytes are, and which bytes of the image they decode to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XzBlock {
    /// Where the block header starts in the file.
    pub file_offset: u64,
    /// Header, compressed data, padding and check: what to copy to move the block intact.
    pub total_size: u64,
    /// `total_size` without the padding, as the index records it.
    pub unpadded_size: u64,
    /// Where the block's bytes start in the decoded image.
    pub uncompressed_offset: u64,
    /// How many bytes the block decodes to.
    pub uncompressed_size: u64,
}

impl XzBlock {
    /// The bytes of the decoded image this block holds.
    pub fn uncompressed_range(&self) -> Range<u64> {
        self.uncompressed_offset..self.uncompressed_offset + self.uncompressed_size
    }
}

/// One stream of an `.xz` file; a file is one or more streams, each with its own index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XzStream {
    /// Where the stream header starts in the file.
    pub file_offset: u64,
    /// Just past the stream footer.
    pub file_end: u64,
    /// Zero bytes of stream padding after the footer.
    pub padding: u64,
    /// The stream's blocks, as positions in [`XzIndex::blocks`].
    pub blocks: Range<usize>,
}

/// Every block of an `.xz` file, in order, from the indexes at the end of its streams.
#[derive(Debug, Clone)]
pub struct XzIndex {
    check: u8,
    blocks: Vec<XzBlock>,
    streams: Vec<XzStream>,
    file_len: u64,
    uncompressed_len: u64,
}

/// A stream as found walking backward, before its blocks' offsets in the image are known.
struct FoundStream {
    check: u8,
    start: u64,
    end: u64,
    padding: u64,
    index_offset: u64,
    /// (unpadded size, uncompressed size) per block.
    records: Vec<(u64, u64)>,
}

impl XzIndex {
    /// Read and check the footer, index and header of every stream in `file`.
    ///
    /// All streams must use the same integrity check ([`XzError::NotRandomAccess`] otherwise),
    /// because a patched copy is written as one stream with one check type.
    pub fn read(file: &File) -> Result<XzIndex, XzError> {
        let file_len = file.metadata()?.len();
        if file_len % 4 != 0 {
            return Err(format_err(
                file_len,
                "its size is not a multiple of four bytes, so it is not a whole .xz file \
                 (truncated?)",
            ));
        }
        let mut found = Vec::new();
        let mut end = file_len;
        while end > 0 {
            let stream_end = skip_padding(file, end)?;
            if stream_end == 0 {
                let reason = if found.is_empty() {
                    "it holds no xz stream (empty, or only zero bytes)"
                } else {
                    "it starts with zero bytes instead of an xz stream header"
                };
                return Err(format_err(0, reason));
            }
            let stream = read_stream(file, stream_end, end - stream_end)?;
            end = stream.start;
            found.push(stream);
        }
        if found.is_empty() {
            return Err(format_err(0, "it is empty"));
        }
        found.reverse();
        Self::assemble(found, file_len)
    }

    /// Lay the streams' records out as blocks, in file order.
    fn assemble(found: Vec<FoundStream>, file_len: u64) -> Result<XzIndex, XzError> {
        let check = found.first().map_or(0, |s| s.check);
        if let Some(other) = found.iter().find(|s| s.check != check) {
            return Err(XzError::NotRandomAccess {
                reason: format!(
                    "its streams use different integrity checks ({} and {})",
                    check_name(check),
                    check_name(other.check)
                ),
            });
        }
        let mut blocks = Vec::with_capacity(found.iter().map(|s| s.records.len()).sum());
        let mut streams = Vec::with_capacity(found.len());
        let mut uncompressed = 0u64;
        for s in found {
            let first = blocks.len();
            // read_stream made sure the blocks fit between the header and the index.
            let mut at = s.start + STREAM_HEADER_SIZE;
            for (unpadded_size, uncompressed_size) in s.records {
                let total_size = round4(unpadded_size);
                blocks.push(XzBlock {
                    file_offset: at,
                    total_size,
                    unpadded_size,
                    uncompressed_offset: uncompressed,
                    uncompressed_size,
                });
                at += total_size;
                uncompressed = uncompressed
                    .checked_add(uncompressed_size)
                    .filter(|&n| n <= VLI_MAX)
                    .ok_or_else(|| {
                        format_err(s.index_offset, "its blocks decode to more than 2^63 bytes")
                    })?;
            }
            streams.push(XzStream {
                file_offset: s.start,
                file_end: s.end,
                padding: s.padding,
                blocks: first..blocks.len(),
            });
        }
        Ok(XzIndex {
            check,
            blocks,
            streams,
            file_len,
            uncompressed_len: uncompressed,
        })
    }

    /// The integrity check ID every block carries (0 none, 1 CRC32, 4 CRC64, 10 SHA-256).
    pub fn check(&self) -> u8 {
        self.check
    }

    /// The integrity check's name, for messages.
    pub fn check_name(&self) -> &'static str {
        check_name(self.check)
    }

    /// Every block, in file order (which is also image order).
    pub fn blocks(&self) -> &[XzBlock] {
        &self.blocks
    }

    /// Every stream, in file order.
    pub fn streams(&self) -> &[XzStream] {
        &self.streams
    }

    /// Size of the `.xz` file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Size of the decoded image in bytes.
    pub fn uncompressed_len(&self) -> u64 {
        self.uncompressed_len
    }

    /// Block `i`, or an error naming how many blocks there are.
    fn get(&self, i: usize) -> Result<&XzBlock, XzError> {
        self.blocks.get(i).ok_or_else(|| {
            XzError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no xz block {i}: the file has {}", self.blocks.len()),
            ))
        })
    }

    /// Position in [`XzIndex::blocks`] of the block holding image byte `offset`;
    /// `blocks().len()` when `offset` is past the end.
    pub fn block_at(&self, offset: u64) -> usize {
        // Empty blocks hold no byte: the first block ending after `offset` is the one.
        self.blocks
            .partition_point(|b| b.uncompressed_offset + b.uncompressed_size <= offset)
    }
}

/// Read the stream whose footer ends at `end`, followed by `padding` zero bytes.
fn read_stream(file: &File, end: u64, padding: u64) -> Result<FoundStream, XzError> {
    if end < MIN_STREAM {
        return Err(format_err(
            0,
            format!("its {end} bytes are too few for an xz stream (truncated?)"),
        ));
    }
    let footer_offset = end - STREAM_HEADER_SIZE;
    let mut footer = [0u8; STREAM_HEADER_SIZE as usize];
    read_exact_at(file, footer_offset, &mut footer)?;
    if footer[10..12] != FOOTER_MAGIC {
        return Err(format_err(
            footer_offset + 10,
            "no xz stream footer where one should end (truncated, or not an .xz file)",
        ));
    }
    if crc32(&footer[4..10]) != le32(&footer[0..4]) {
        return Err(format_err(
            footer_offset,
            "the stream footer fails its CRC32",
        ));
    }
    let check = stream_flags(&footer[8..10]).ok_or_else(|| {
        format_err(
            footer_offset + 8,
            "the stream flags are not ones xz defines",
        )
    })?;
    let index_size = (u64::from(le32(&footer[4..8])) + 1) * 4;
    if index_size > MAX_INDEX {
        return Err(format_err(
            footer_offset + 4,
            format!("its index claims {index_size} bytes, more than any image needs"),
        ));
    }
    let index_offset = footer_offset
        .checked_sub(index_size)
        .filter(|&o| o >= STREAM_HEADER_SIZE)
        .ok_or_else(|| {
            format_err(
                footer_offset + 4,
                "the index size in the stream footer runs past the start of the file",
            )
        })?;
    let mut raw = vec![0u8; index_size as usize];
    read_exact_at(file, index_offset, &mut raw)?;
    let records = parse_index(&raw, index_offset)?;
    let blocks_len = records.iter().try_fold(0u64, |sum, &(unpadded, _)| {
        sum.checked_add(round4(unpadded))
    });
    let start = blocks_len
        .and_then(|n| index_offset.checked_sub(n))
        .and_then(|o| o.checked_sub(STREAM_HEADER_SIZE))
        .ok_or_else(|| {
            format_err(
                index_offset,
                "the index lists more block data than the file holds before it",
            )
        })?;
    let mut header = [0u8; STREAM_HEADER_SIZE as usize];
    read_exact_at(file, start, &mut header)?;
    if header[..6] != HEADER_MAGIC {
        return Err(format_err(
            start,
            "no xz stream header where the index says the stream starts",
        ));
    }
    if crc32(&header[6..8]) != le32(&header[8..12]) {
        return Err(format_err(start + 6, "the stream header fails its CRC32"));
    }
    if header[6..8] != footer[8..10] {
        return Err(format_err(
            start + 6,
            "the stream header and footer disagree about the stream flags",
        ));
    }
    Ok(FoundStream {
        check,
        start,
        end,
        padding,
        index_offset,
        records,
    })
}

/// Parse an index (`raw`, read from `offset` of the file) into (unpadded, uncompressed) sizes.
fn parse_index(raw: &[u8], offset: u64) -> Result<Vec<(u64, u64)>, XzError> {
    let err = |pos: usize, reason: &str| format_err(offset + pos as u64, reason);
    let Some(body_len) = raw.len().checked_sub(4) else {
        return Err(err(0, "the index is too short"));
    };
    let (body, stored) = raw.split_at(body_len);
    if crc32(body) != le32(stored) {
        return Err(err(body_len, "the index fails its CRC32"));
    }
    if body.first() != Some(&0) {
        return Err(err(0, "no index where the stream footer says it starts"));
    }
    let mut pos = 1;
    let count = read_vli(body, &mut pos).ok_or_else(|| err(pos, "bad block count in the index"))?;
    // Each record takes at least two bytes; the claimed count cannot size the allocation.
    let mut records = Vec::with_capacity((count as usize).min(body.len() / 2));
    for _ in 0..count {
        let unpadded = read_vli(body, &mut pos);
        let uncompressed = read_vli(body, &mut pos);
        match (unpadded, uncompressed) {
            (Some(u), Some(n)) if (UNPADDED_MIN..=UNPADDED_MAX).contains(&u) => {
                records.push((u, n))
            }
            _ => return Err(err(pos, "bad block record in the index")),
        }
    }
    while pos % 4 != 0 {
        if body.get(pos) != Some(&0) {
            return Err(err(pos, "the index padding is not zero bytes"));
        }
        pos += 1;
    }
    if pos != body.len() {
        return Err(err(pos, "the index is longer than its records"));
    }
    Ok(records)
}

/// Where the data before `end` stops being stream padding (zero bytes, in fours).
fn skip_padding(file: &File, mut end: u64) -> Result<u64, XzError> {
    let mut buf = vec![0u8; PADDING_SCAN];
    while end > 0 {
        // `end` stays a multiple of four: the file size is one, and so is PADDING_SCAN.
        let n = end.min(PADDING_SCAN as u64) as usize;
        let chunk = &mut buf[..n];
        read_exact_at(file, end - n as u64, chunk)?;
        match chunk.chunks_exact(4).rposition(|w| w != [0; 4]) {
            Some(last) => return Ok(end - n as u64 + (last as u64 + 1) * 4),
            None => end -= n as u64,
        }
    }
    Ok(0)
}

/// The check ID of valid stream flags: a zero byte, then the ID in the low four bits.
fn stream_flags(flags: &[u8]) -> Option<u8> {
    match flags {
        [0, f] if f & 0xF0 == 0 => Some(*f),
        _ => None,
    }
}

/// Decode one of the format's variable-length integers at `*pos`, moving past it.
fn read_vli(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A zero last byte would be a longer-than-needed encoding, which the format forbids.
            return (i == 0 || byte != 0).then_some(value);
        }
    }
    None
}

/// Append `value` as a variable-length integer.
fn write_vli(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn round4(n: u64) -> u64 {
    (n + 3) & !3
}

fn le32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

fn check_name(id: u8) -> &'static str {
    match id {
        0 => "no check",
        1 => "CRC32",
        4 => "CRC64",
        10 => "SHA-256",
        _ => "a reserved check type",
    }
}

/// A stream header announcing `check`.
pub(crate) fn stream_header(check: u8) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..6].copy_from_slice(&HEADER_MAGIC);
    h[7] = check;
    let crc = crc32(&h[6..8]);
    h[8..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The index of a stream whose blocks have these (unpadded, uncompressed) sizes.
pub(crate) fn index_bytes(records: &[(u64, u64)]) -> Vec<u8> {
    let mut out = vec![0u8];
    write_vli(&mut out, records.len() as u64);
    for &(unpadded, uncompressed) in records {
        write_vli(&mut out, unpadded);
        write_vli(&mut out, uncompressed);
    }
    out.resize(round4(out.len() as u64) as usize, 0);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The footer closing a stream announcing `check` whose index is `index_len` bytes; `None` when
/// the index is too big for the footer to describe.
pub(crate) fn stream_footer(check: u8, index_len: u64) -> Option<[u8; 12]> {
    if index_len < 8 || index_len % 4 != 0 {
        return None;
    }
    let backward = u32::try_from(index_len / 4 - 1).ok()?;
    let mut f = [0u8; 12];
    f[4..8].copy_from_slice(&backward.to_le_bytes());
    f[9] = check;
    f[10..].copy_from_slice(&FOOTER_MAGIC);
    let crc = crc32(&f[4..10]);
    f[..4].copy_from_slice(&crc.to_le_bytes());
    Some(f)
}

/// The filter chain of one block header, freed through liblzma when dropped.
struct Filters([sys::lzma_filter; sys::LZMA_FILTERS_MAX as usize + 1]);

impl Filters {
    fn new() -> Self {
        Filters(
            [sys::lzma_filter {
                id: sys::LZMA_VLI_UNKNOWN,
                options: std::ptr::null_mut(),
            }; sys::LZMA_FILTERS_MAX as usize + 1],
        )
    }
}

impl Drop for Filters {
    fn drop(&mut self) {
        // SAFETY: every entry is either unused (LZMA_VLI_UNKNOWN with null options, which
        // terminates the array) or was filled by lzma_block_header_decode with options from
        // liblzma's default allocator, which lzma_filters_free releases exactly once.
        unsafe { sys::lzma_filters_free(self.0.as_mut_ptr(), std::ptr::null()) };
    }
}

fn to_usize(n: u64) -> Result<usize, XzError> {
    usize::try_from(n).map_err(|_| {
        XzError::Io(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("a block of {n} bytes does not fit in this machine's memory"),
        ))
    })
}

fn out_of_memory() -> XzError {
    XzError::Io(io::Error::new(
        io::ErrorKind::OutOfMemory,
        "out of memory decoding an xz block",
    ))
}

/// Decode block `i` of `index` from `file`, checking it against its integrity check.
pub fn decode_block(file: &File, index: &XzIndex, i: usize) -> Result<Vec<u8>, XzError> {
    let raw = read_stored(file, index, i)?;
    decode_raw(&raw, index.get(i)?, i, index.check)
}

/// Block `i` of `index` as `file` stores it: header, compressed data, padding and check.
fn read_stored(file: &File, index: &XzIndex, i: usize) -> Result<Vec<u8>, XzError> {
    let block = index.get(i)?;
    let mut raw = vec![0u8; to_usize(block.total_size)?];
    read_exact_at(file, block.file_offset, &mut raw)?;
    Ok(raw)
}

/// Decode the whole block `raw` (header to check), described by `block`, number `index`.
pub(crate) fn decode_raw(
    raw: &[u8],
    block: &XzBlock,
    index: usize,
    check: u8,
) -> Result<Vec<u8>, XzError> {
    let corrupt = |reason: String| XzError::CorruptBlock {
        index,
        uncompressed_offset: block.uncompressed_offset,
        file_offset: block.file_offset,
        reason,
    };
    let first = raw.first().copied().unwrap_or(0);
    if first == 0 {
        return Err(corrupt(
            "an index starts where its block header should".into(),
        ));
    }
    let header_size = (usize::from(first) + 1) * 4;
    if header_size > raw.len() {
        return Err(corrupt(format!(
            "its {header_size}-byte header is longer than the {} bytes the index gives the block",
            raw.len()
        )));
    }
    let out_len = to_usize(block.uncompressed_size)?;
    let mut filters = Filters::new();
    let (mut opts, ret) = read_header(raw, header_size, check, &mut filters);
    if ret != sys::LZMA_OK {
        return Err(corrupt(format!(
            "its header does not decode ({})",
            ret_text(ret)
        )));
    }
    // SAFETY: `opts` was filled in by the header decoder; the call only reads and writes it.
    let ret = unsafe { sys::lzma_block_compressed_size(&mut opts, block.unpadded_size) };
    if ret != sys::LZMA_OK {
        return Err(corrupt(
            "its header and the index disagree about its compressed size".into(),
        ));
    }
    if opts.uncompressed_size != sys::LZMA_VLI_UNKNOWN
        && opts.uncompressed_size != block.uncompressed_size
    {
        return Err(corrupt(format!(
            "its header says it decodes to {} bytes, the index {}",
            opts.uncompressed_size, block.uncompressed_size
        )));
    }
    // The decoder then fails a block that decodes to more or fewer bytes than the index says.
    opts.uncompressed_size = block.uncompressed_size;
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(out_len)
        .map_err(|_| out_of_memory())?;
    let mut in_pos = header_size;
    let mut out_pos = 0usize;
    // SAFETY: the input pointer and size describe `raw`, with `in_pos` inside it; the output
    // pointer is valid for `out_len` bytes of writes (reserved above) and liblzma writes only
    // below `out_pos`; `opts` and the filters it points to live through the call.
    let ret = unsafe {
        sys::lzma_block_buffer_decode(
            &mut opts,
            std::ptr::null(),
            raw.as_ptr(),
            &mut in_pos,
            raw.len(),
            out.as_mut_ptr(),
            &mut out_pos,
            out_len,
        )
    };
    match ret {
        sys::LZMA_OK => {}
        sys::LZMA_MEM_ERROR => return Err(out_of_memory()),
        sys::LZMA_DATA_ERROR => {
            return Err(corrupt(format!(
                "its data does not decode or does not match its {} (damaged or truncated)",
                check_name(check)
            )));
        }
        sys::LZMA_BUF_ERROR => {
            return Err(corrupt(
                "it decodes to more bytes than the index says".into(),
            ));
        }
        other => return Err(corrupt(ret_text(other).into())),
    }
    if in_pos != raw.len() || out_pos != out_len {
        return Err(corrupt(format!(
            "it decodes to {out_pos} bytes from {in_pos} of its {} bytes",
            raw.len()
        )));
    }
    // SAFETY: liblzma initialised the first `out_pos` bytes, and `out_pos == out_len`, which is
    // within the capacity reserved above.
    unsafe { out.set_len(out_pos) };
    Ok(out)
}

/// The header size and dictionary size of a block whose only filter is LZMA2, read from its
/// header (the first bytes of `raw`); `None` for any other filter chain or a header that does not
/// decode.
pub(crate) fn lone_lzma2(raw: &[u8], check: u8) -> Option<(usize, u32)> {
    let header_size = (usize::from(*raw.first()?) + 1) * 4;
    if raw[0] == 0 || header_size > raw.len() {
        return None;
    }
    let mut filters = Filters::new();
    let (_, ret) = read_header(raw, header_size, check, &mut filters);
    let [lzma2, end, ..] = &filters.0;
    if ret != sys::LZMA_OK || lzma2.id != sys::LZMA_FILTER_LZMA2 || end.id != sys::LZMA_VLI_UNKNOWN
    {
        return None;
    }
    // SAFETY: the header decoder allocated an lzma_options_lzma for the LZMA2 filter it
    // reported; it stays alive until `filters` drops at the end of this function.
    let dict = unsafe { (*lzma2.options.cast::<sys::lzma_options_lzma>()).dict_size };
    Some((header_size, dict))
}

/// Decode the `header_size`-byte block header at the start of `raw` (the caller has checked it
/// is that long), its filter chain into `filters`; liblzma's verdict comes with the result.
fn read_header(
    raw: &[u8],
    header_size: usize,
    check: u8,
    filters: &mut Filters,
) -> (sys::lzma_block, sys::lzma_ret) {
    debug_assert!(header_size <= raw.len());
    // SAFETY: an all-zero lzma_block is a valid value (null pointers, zero integers); the fields
    // the header decoder reads are set just below.
    let mut opts: sys::lzma_block = unsafe { std::mem::zeroed() };
    opts.version = 1;
    opts.header_size = header_size as u32;
    opts.check = sys::lzma_check::from(check);
    opts.filters = filters.0.as_mut_ptr();
    // SAFETY: `raw` holds at least `header_size` bytes (the callers check), all the decoder
    // reads; `opts.filters` points to LZMA_FILTERS_MAX + 1 entries as the API requires and
    // outlives the call; the options it allocates are freed when `filters` drops.
    let ret = unsafe { sys::lzma_block_header_decode(&mut opts, std::ptr::null(), raw.as_ptr()) };
    (opts, ret)
}

fn ret_text(ret: sys::lzma_ret) -> &'static str {
    match ret {
        sys::LZMA_OPTIONS_ERROR => "it uses filters or options liblzma cannot decode",
        sys::LZMA_UNSUPPORTED_CHECK => "its check type cannot be verified by this liblzma",
        sys::LZMA_DATA_ERROR => "the data is damaged",
        sys::LZMA_MEM_ERROR => "out of memory",
        sys::LZMA_PROG_ERROR => "liblzma reports a misuse of its API",
        _ => "liblzma reports an error",
    }
}

/// Whether liblzma can verify check type `check`.
fn check_supported(check: u8) -> bool {
    // SAFETY: a pure function of its integer argument.
    unsafe { sys::lzma_check_is_supported(sys::lzma_check::from(check)) != 0 }
}

/// Refuse files where random access would cost more than decoding the whole file once.
fn random_access_ok(index: &XzIndex, max_block: u64) -> Result<(), XzError> {
    if !check_supported(index.check) {
        return Err(format_err(
            7,
            format!(
                "its integrity check (ID {}) is one this build cannot verify",
                index.check
            ),
        ));
    }
    let reason = match index.blocks.len() {
        0 => Some("it holds no data".to_string()),
        1 => Some(
            "a single xz block: xz compressed it single-threaded without --block-size, so every \
             read would decode the whole image"
                .to_string(),
        ),
        _ => index
            .blocks
            .iter()
            // Compressed size counts too: it is what a read allocates before decoding.
            .position(|b| b.uncompressed_size.max(b.total_size) > max_block)
            .map(|i| {
                let b = &index.blocks[i];
                format!(
                    "block {i} holds {} MiB, more than the {} MiB one read may cost",
                    b.uncompressed_size.max(b.total_size) >> 20,
                    max_block >> 20
                )
            }),
    };
    match reason {
        Some(reason) => Err(XzError::NotRandomAccess { reason }),
        None => Ok(()),
    }
}

/// A decoded block, shared between the cache and the reads using it.
type Shared = Arc<Vec<u8>>;

/// Most recently used decoded blocks, newest first. Capacities are a handful, so a scan is fine.
struct Lru {
    capacity: usize,
    entries: VecDeque<(usize, Shared)>,
}

impl Lru {
    fn get(&mut self, i: usize) -> Option<Shared> {
        let pos = self.entries.iter().position(|(j, _)| *j == i)?;
        let entry = self.entries.remove(pos)?;
        let data = Arc::clone(&entry.1);
        self.entries.push_front(entry);
        Some(data)
    }

    fn put(&mut self, i: usize, data: Shared) {
        if self.capacity == 0 {
            return;
        }
        if let Some(pos) = self.entries.iter().position(|(j, _)| *j == i) {
            self.entries.remove(pos);
        }
        self.entries.push_front((i, data));
        self.entries.truncate(self.capacity);
    }
}

/// 4 KiB pages of decoded bytes, oldest evicted first.
#[derive(Default)]
struct Pages {
    map: std::collections::HashMap<u64, Box<[u8; PAGE]>>,
    order: VecDeque<u64>,
}

impl Pages {
    /// Copy `[offset, offset + buf.len())` out of cached pages, if every page is present.
    fn get(&self, offset: u64, buf: &mut [u8]) -> bool {
        let first = offset / PAGE as u64;
        let last = (offset + buf.len() as u64 - 1) / PAGE as u64;
        if !(first..=last).all(|p| self.map.contains_key(&p)) {
            return false;
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (page, within) = (pos / PAGE as u64, (pos % PAGE as u64) as usize);
            let n = (PAGE - within).min(buf.len() - done);
            if let Some(data) = self.map.get(&page) {
                buf[done..done + n].copy_from_slice(&data[within..within + n]);
            }
            done += n;
        }
        true
    }

    /// Remember the whole pages of `block` (decoded, starting at `start`) that a read of
    /// `range` covered.
    fn put(&mut self, start: u64, block: &[u8], range: Range<u64>) {
        let end = start + block.len() as u64;
        let first = range.start.max(start) / PAGE as u64;
        let last = (range.end.min(end) - 1) / PAGE as u64;
        for p in first..=last {
            let (a, b) = (p * PAGE as u64, (p + 1) * PAGE as u64);
            if a < start || b > end || self.map.contains_key(&p) {
                continue; // a page split across blocks is simply not cached
            }
            let mut page = Box::new([0u8; PAGE]);
            page.copy_from_slice(&block[(a - start) as usize..(b - start) as usize]);
            self.map.insert(p, page);
            self.order.push_back(p);
            if self.order.len() > PAGE_CACHE_BYTES / PAGE {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// An `.xz` image read at random: a [`BlockDev`] over its decoded bytes.
pub struct XzDev {
    file: File,
    index: XzIndex,
    cache: Mutex<Lru>,
    pages: Mutex<Pages>,
    decoded: AtomicU64,
    threads: usize,
}

impl XzDev {
    /// Open `path` and read its index, keeping up to `cache_blocks` decoded blocks (0 keeps none).
    ///
    /// Fails with [`XzError::NotRandomAccess`] for a file of one block or with a block larger
    /// than [`MAX_BLOCK`]; decode such a file whole instead.
    pub fn open(path: &Path, cache_blocks: usize) -> Result<XzDev, XzError> {
        let file = File::open(path)?;
        let index = XzIndex::read(&file)?;
        random_access_ok(&index, MAX_BLOCK)?;
        Ok(XzDev {
            file,
            index,
            cache: Mutex::new(Lru {
                capacity: cache_blocks,
                entries: VecDeque::new(),
            }),
            pages: Mutex::new(Pages::default()),
            decoded: AtomicU64::new(0),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// The file's blocks and streams.
    pub fn index(&self) -> &XzIndex {
        &self.index
    }

    /// The `.xz` file, for copying blocks verbatim.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// How many blocks have been decoded so far, by reads, [`XzDev::decode`] and
    /// [`XzDev::for_each_block`] (cache hits do not count).
    pub fn blocks_decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// Decode block `i` afresh, bypassing the cache.
    pub fn decode(&self, i: usize) -> Result<Vec<u8>, XzError> {
        let data = decode_block(&self.file, &self.index, i)?;
        self.decoded.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    /// Block `i` as it is stored: header, compressed data, padding and check.
    pub fn raw_block(&self, i: usize) -> Result<Vec<u8>, XzError> {
        read_stored(&self.file, &self.index, i)
    }

    /// Decode block `i` from `raw`, its stored bytes as [`XzDev::raw_block`] returns them,
    /// verifying its check.
    pub fn decode_stored(&self, i: usize, raw: &[u8]) -> Result<Vec<u8>, XzError> {
        let data = decode_raw(raw, self.index.get(i)?, i, self.index.check)?;
        self.decoded.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    /// Forget every cached block and page: for a caller done with random reads that is about to
    /// need the memory.
    pub fn release_cache(&self) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .clear();
        *self.pages.lock().unwrap_or_else(|p| p.into_inner()) = Pages::default();
        // glibc keeps freed memory (the pages are thousands of small allocations) counted
        // against the process unless asked to give it back.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only hands free memory back to the kernel, under the allocator's
        // own locks; no live allocation is touched.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Decode every block on `threads` workers and hand each to `f` in file order, stopping at
    /// the first error. At most `threads + 1` decoded blocks exist at a time, whatever the file's
    /// size, and the cache is left alone.
    pub fn for_each_block<E, F>(&self, threads: usize, mut f: F) -> Result<(), E>
    where
        E: From<XzError> + Send,
        F: FnMut(&XzBlock, &[u8]) -> Result<(), E>,
    {
        let blocks = &self.index.blocks;
        in_order(
            blocks.len(),
            threads,
            |i| self.decode(i).map_err(E::from),
            |i, data| f(&blocks[i], &data),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // The cache only ever holds whole decoded blocks, so a panic elsewhere cannot leave it
        // inconsistent.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The decoded blocks `which`, from the cache or decoded in parallel (and then cached).
    fn blocks(&self, which: &[usize]) -> Result<Vec<(usize, Shared)>, XzError> {
        let mut have = Vec::with_capacity(which.len());
        let mut missing = Vec::new();
        {
            let mut cache = self.lock();
            for &i in which {
                match cache.get(i) {
                    Some(data) => have.push((i, data)),
                    None => missing.push(i),
                }
            }
        }
        if missing.is_empty() {
            return Ok(have);
        }
        // Decoding runs outside the lock, so readers of other blocks are not held up.
        let decoded = self.decode_many(&missing)?;
        let mut cache = self.lock();
        for (i, data) in missing.into_iter().zip(decoded) {
            let data = Arc::new(data);
            cache.put(i, Arc::clone(&data));
            have.push((i, data));
        }
        Ok(have)
    }

    /// Decode `which`, one thread each, the first on the calling thread.
    fn decode_many(&self, which: &[usize]) -> Result<Vec<Vec<u8>>, XzError> {
        let Some((&first, rest)) = which.split_first() else {
            return Ok(Vec::new());
        };
        std::thread::scope(|s| {
            let others: Vec<_> = rest
                .iter()
                .map(|&i| s.spawn(move || self.decode(i)))
                .collect();
            let mut out = Vec::with_capacity(which.len());
            out.push(self.decode(first)?);
            for handle in others {
                let data = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                out.push(data);
            }
            Ok(out)
        })
    }
}

impl BlockDev for XzDev {
    fn len(&self) -> u64 {
        self.index.uncompressed_len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let small = buf.len() <= SMALL_READ;
        if small
            && self
                .pages
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(offset, buf)
        {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let first = self.index.block_at(offset);
        let last = self.index.block_at(end - 1);
        let wanted: Vec<usize> = (first..=last)
            .filter(|&i| self.index.blocks[i].uncompressed_size > 0)
            .collect();
        // A few blocks at a time, so a huge read holds no more than a few decoded blocks.
        for batch in wanted.chunks(self.threads.max(1)) {
            for (i, data) in self.blocks(batch)? {
                let b = &self.index.blocks[i];
                let from = offset.max(b.uncompressed_offset);
                let to = end.min(b.uncompressed_offset + b.uncompressed_size);
                let src =
                    (from - b.uncompressed_offset) as usize..(to - b.uncompressed_offset) as usize;
                buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(&data[src]);
                if small {
                    self.pages.lock().unwrap_or_else(|p| p.into_inner()).put(
                        b.uncompressed_offset,
                        &data,
                        offset..end,
                    );
                }
            }
        }
        Ok(())
    }
}

/// Run `work` on items `0..n` on `threads` workers and hand the results to `deliver` in order.
///
/// Workers run at most `threads + 1` items ahead of delivery (counting the one being delivered),
/// so memory stays bounded however fast they are; the first error, from either side, stops
/// everything and is returned.
pub(crate) fn in_order<T, E>(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<T, E> + Sync,
    mut deliver: impl FnMut(usize, T) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    E: Send,
{
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        for i in 0..n {
            deliver(i, work(i)?)?;
        }
        return Ok(());
    }
    let window = threads + 1;
    let gate = Gate {
        state: Mutex::new(GateState {
            next: 0,
            delivered: 0,
            stop: false,
        }),
        moved: Condvar::new(),
    };
    let (tx, rx) = mpsc::channel::<(usize, Result<T, E>)>();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (gate, work) = (&gate, &work);
            s.spawn(move || {
                // A panicking worker never sends its item; stopping the others lets every sender
                // go, so the receiving loop below ends instead of waiting for it forever.
                let _stop = StopOnPanic(gate);
                while let Some(i) = gate.take(n, window) {
                    if tx.send((i, work(i))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Wakes every waiting worker on any way out of here, a panic in `deliver` included, so
        // the scope can join them.
        let _stop = StopOnDrop(&gate);
        let mut early = BTreeMap::new();
        for want in 0..n {
            let result = loop {
                if let Some(r) = early.remove(&want) {
                    break r;
                }
                match rx.recv() {
                    Ok((i, r)) => {
                        early.insert(i, r);
                    }
                    // Every worker is gone without sending `want`: one panicked, and the scope
                    // re-raises that panic once this closure returns.
                    Err(_) => return Ok(()),
                }
            };
            deliver(want, result?)?;
            gate.delivered(want + 1);
        }
        Ok(())
    })
}

struct GateState {
    next: usize,
    delivered: usize,
    stop: bool,
}

/// Hands out item numbers to workers, never more than a window ahead of delivery.
struct Gate {
    state: Mutex<GateState>,
    moved: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Only plain counters live behind the lock; they stay meaningful after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next item to work on, waiting while the window is full; `None` when done or stopped.
    fn take(&self, n: usize, window: usize) -> Option<usize> {
        let mut st = self.lock();
        loop {
            if st.stop || st.next >= n {
                return None;
            }
            if st.next < st.delivered + window {
                st.next += 1;
                return Some(st.next - 1);
            }
            st = self.moved.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn delivered(&self, count: usize) {
        self.lock().delivered = count;
        self.moved.notify_all();
    }
}

impl Gate {
    fn stop(&self) {
        self.lock().stop = true;
        self.moved.notify_all();
    }
}

struct StopOnDrop<'a>(&'a Gate);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

struct StopOnPanic<'a>(&'a Gate);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::AtomicUsize;

    const BS: usize = 65536;

    /// Bytes that look like a disk: zero runs, text, counters and noise, changing every 4 KiB.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let kind = rnd() % 4;
            for j in 0..4096usize {
                out.push(match kind {
                    0 => 0,
                    1 => b"the quick brown fox jumps over the lazy dog\n"[j % 44],
                    2 => (j / 3) as u8,
                    _ => rnd() as u8,
                });
            }
        }
        out.truncate(len);
        out
    }

    fn xz(args: &[&str], input: &Path) -> Vec<u8> {
        let out = Command::new("xz")
            .args(args)
            .arg("-c")
            .arg(input)
            .output()
            .expect("xz (xz-utils) must be installed");
        assert!(
            out.status.success(),
            "xz {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Compress `data` with the xz CLI and `args`; returns the .xz path.
    fn compress(dir: &Path, name: &str, data: &[u8], args: &[&str]) -> PathBuf {
        let raw = dir.join(format!("{name}.raw"));
        std::fs::write(&raw, data).unwrap();
        let path = dir.join(format!("{name}.xz"));
        std::fs::write(&path, xz(args, &raw)).unwrap();
        path
    }

    /// (file offset, uncompressed offset, total size, uncompressed size) per block, per `xz -l`.
    fn xz_list(path: &Path) -> Vec<(u64, u64, u64, u64)> {
        let out = Command::new("xz")
            .args(["--robot", "-lv"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("block\t"))
            .map(|l| {
                let f: Vec<u64> = l
                    .split('\t')
                    .skip(4)
                    .take(4)
                    .map(|v| v.parse().unwrap())
                    .collect();
                (f[0], f[1], f[2], f[3])
            })
            .collect()
    }

    fn ours(index: &XzIndex) -> Vec<(u64, u64, u64, u64)> {
        index
            .blocks()
            .iter()
            .map(|b| {
                (
                    b.file_offset,
                    b.uncompressed_offset,
                    b.total_size,
                    b.uncompressed_size,
                )
            })
            .collect()
    }

    fn index_of(path: &Path) -> Result<XzIndex, XzError> {
        XzIndex::read(&File::open(path).unwrap())
    }

    /// A six-block file with a partial last block, and what it decodes to per `xz -dc`.
    fn six_blocks(dir: &Path, threads: &str) -> (PathBuf, Vec<u8>) {
        let data = sample(5 * BS + 12345, 7);
        let path = compress(dir, "six", &data, &[threads, "--block-size=65536", "-6"]);
        let decoded = xz(&["-dc"], &path);
        assert_eq!(decoded, data);
        (path, decoded)
    }

    #[test]
    fn index_matches_xz_list_single_and_multi_threaded() {
        let dir = tempfile::tempdir().unwrap();
        // -T1 leaves sizes out of the block headers, -T2 writes them in: both must parse.
        for threads in ["-T1", "-T2"] {
            let (path, decoded) = six_blocks(dir.path(), threads);
            let index = index_of(&path).unwrap();
            assert_eq!(ours(&index), xz_list(&path), "{threads}");
            assert_eq!(index.blocks().len(), 6);
            assert_eq!(index.check(), 4, "xz defaults to CRC64");
            assert_eq!(index.uncompressed_len(), decoded.len() as u64);
            assert_eq!(index.file_len(), std::fs::metadata(&path).unwrap().len());
            assert_eq!(index.streams().len(), 1);
            let b = index.blocks()[3];
            assert_eq!(index.block_at(b.uncompressed_offset), 3);
            assert_eq!(index.block_at(b.uncompressed_offset - 1), 2);
            assert_eq!(
                index.block_at(b.uncompressed_offset + b.uncompressed_size - 1),
                3
            );
            assert_eq!(index.block_at(index.uncompressed_len()), 6);
            for b in index.blocks() {
                assert_eq!(b.total_size, (b.unpadded_size + 3) & !3);
            }
        }
    }

    #[test]
    fn concatenated_streams_with_padding_read_like_xz_dc() {
        let dir = tempfile::tempdir().unwrap();
        let a = compress(
            dir.path(),
            "a",
            &sample(3 * BS + 5, 1),
            &["-T1", "--block-size=65536"],
        );
        let b = compress(
            dir.path(),
            "b",
            &sample(2 * BS - 3, 2),
            &["-T2", "--block-size=65536"],
        );
        let mut both = std::fs::read(&a).unwrap();
        let a_len = both.len() as u64;
        both.extend_from_slice(&[0; 4]);
        both.extend(std::fs::read(&b).unwrap());
        both.extend_from_slice(&[0; 8]);
        let path = dir.path().join("both.xz");
        std::fs::write(&path, &both).unwrap();

        let index = index_of(&path).unwrap();
        assert_eq!(ours(&index), xz_list(&path));
        let s = index.streams();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].file_offset, s[0].file_end, s[0].padding),
            (0, a_len, 4)
        );
        assert_eq!((s[1].file_offset, s[1].padding), (a_len + 4, 8));
        assert_eq!((s[0].blocks.clone(), s[1].blocks.clone()), (0..4, 4..6));

        let expect = xz(&["-dc"], &path);
        let dev = XzDev::open(&path, 2).unwrap();
        assert_eq!(dev.len(), expect.len() as u64);
        // Across the stream boundary, and everything.
        let at = index.blocks()[4].uncompressed_offset - 100;
        let mut buf = vec![0; 300];
        dev.read_at(at, &mut buf).unwrap();
        assert_eq!(buf, expect[at as usize..at as usize + 300]);
        let mut all = vec![0; expect.len()];
        dev.read_at(0, &mut all).unwrap();
        assert_eq!(all, expect);

        // Padding that is not a multiple of four is not .xz (xz itself refuses it too).
        both.truncate(both.len() - 8);
        both.extend_from_slice(&[0; 6]);
        std::fs::write(&path, &both).unwrap();
        assert!(index_of(&path).unwrap_err().is_bad_input());
    }

    #[test]
    fn streams_with_different_checks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = compress(dir.path(), "a", &sample(BS, 1), &["-C", "crc32"]);
        let b = compress(dir.path(), "b", &sample(BS, 2), &["-C", "crc64"]);
        let mut both = std::fs::read(a).unwrap();
        both.extend(std::fs::read(b).unwrap());
        let path = dir.path().join("mixed.xz");
        std::fs::write(&path, both).unwrap();
        match index_of(&path) {
            Err(e @ XzError::NotRandomAccess { .. }) => {
                assert!(e.to_string().contains("CRC32"), "{e}");
                assert!(!e.is_bad_input());
            }
            other => panic!("expected NotRandomAccess, got {other:?}"),
        }
    }

    #[test]
    fn reads_at_random_match_xz_dc() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expect) = six_blocks(dir.path(), "-T1");
        let dev = XzDev::open(&path, 2).unwrap();
        let len = expect.len() as u64;
        assert_eq!(dev.len(), len);
        let bs = BS as u64;
        let mut reads = vec![
            (0, 1),
            (0, len),
            (len - 1, 1),
            (5 * bs, 12345),
            (5 * bs - 1, 2),
            (bs - 10, 20),
            (bs - 10, 3 * bs),
            (2 * bs, bs),
            (123, 0),
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % len;
            let n = (x >> 40) % (2 * bs + 1).min(len - off + 1);
            reads.push((off, n));
        }
        for (off, n) in reads {
            let mut buf = vec![0xEE; n as usize];
            dev.read_at(off, &mut buf).unwrap();
            assert!(
                buf == expect[off as usize..(off + n) as usize],
                "read of {n} at {off} differs"
            );
        }
        let mut buf = [0u8; 2];
        assert!(dev.read_at(len - 1, &mut buf).is_err(), "past the end");
        assert!(dev.read_at(u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn a_small_read_decodes_only_its_block_and_the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = six_blocks(dir.path(), "-T2");
        let bs = BS as u64;
        let dev = XzDev::open(&path, 1).unwrap();
        assert_eq!(dev.blocks_decoded(), 0, "opening decodes nothing");
        let mut buf = [0u8; 10];
        dev.read_at(3 * bs + 7, &mut buf).unwrap();
        assert_eq!(dev.blocks_decoded(), 1);
        dev.read_at(3 * bs + 100, &mut buf).unwrap();
        assert_eq!(
            dev.blocks_decoded(),
            1,
            "a cached block is not decoded again"
        );
        dev.read_at(bs - 5, &mut buf).unwrap();
        assert_eq!(
            dev.blocks_decoded(),
            3,
            "a read over a boundary decodes both sides"
        );
        dev.read_at(3 * bs + 2 * PAGE as u64, &mut buf).unwrap();
        assert_eq!(dev.blocks_decoded(), 4, "capacity 1: block 3 was evicted");
        dev.read_at(bs - 5, &mut buf).unwrap();
        dev.read_at(3 * bs + 7, &mut buf).unwrap();
        assert_eq!(
            dev.blocks_decoded(),
            4,
            "pages read before are kept after their blocks leave the cache"
        );
        let mut page = [0u8; 10];
        dev.read_at(3 * bs + 2 * PAGE as u64, &mut page).unwrap();
        let fresh = XzDev::open(&path, 0).unwrap();
        let mut check = [0u8; 10];
        fresh.read_at(3 * bs + 2 * PAGE as u64, &mut check).unwrap();
        assert_eq!(
            page, check,
            "a page from the page cache holds the block's bytes"
        );

        let none = XzDev::open(&path, 0).unwrap();
        none.read_at(0, &mut buf).unwrap();
        none.read_at(2 * PAGE as u64, &mut buf).unwrap();
        assert_eq!(none.blocks_decoded(), 2, "capacity 0 keeps no blocks");
        none.read_at(0, &mut buf).unwrap();
        assert_eq!(
            none.blocks_decoded(),
            2,
            "but small reads are kept as pages"
        );
    }

    #[test]
    fn threads_share_one_device() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expect) = six_blocks(dir.path(), "-T1");
        let dev = XzDev::open(&path, DEFAULT_CACHE_BLOCKS).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (dev, expect) = (&dev, &expect);
                s.spawn(move || {
                    for k in 0..40u64 {
                        let off = (k * 7919 + t * 104_729) % (expect.len() as u64 - 5000);
                        let mut buf = vec![0; 5000];
                        dev.read_at(off, &mut buf).unwrap();
                        assert!(buf == expect[off as usize..off as usize + 5000]);
                    }
                });
            }
        });
    }

    #[test]
    fn one_block_files_and_huge_blocks_are_not_random_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = compress(dir.path(), "one", &sample(3 * BS, 3), &["-T1", "-6"]);
        assert_eq!(index_of(&path).unwrap().blocks().len(), 1);
        match XzDev::open(&path, 4) {
            Err(XzError::NotRandomAccess { reason }) => {
                assert!(reason.contains("single xz block"), "{reason}")
            }
            other => panic!("expected NotRandomAccess, got {:?}", other.err()),
        }
        let (six, _) = six_blocks(dir.path(), "-T1");
        let index = index_of(&six).unwrap();
        assert!(random_access_ok(&index, MAX_BLOCK).is_ok());
        match random_access_ok(&index, 1000) {
            Err(XzError::NotRandomAccess { reason }) => assert!(reason.contains("block 0")),
            other => panic!("expected NotRandomAccess, got {other:?}"),
        }
    }

    #[test]
    fn a_corrupt_block_is_named_and_the_others_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expect) = six_blocks(dir.path(), "-T2");
        let index = index_of(&path).unwrap();
        let b2 = index.blocks()[2];
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(b2.file_offset + b2.total_size / 2) as usize] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let t = Command::new("xz").arg("-t").arg(&path).output().unwrap();
        assert!(!t.status.success(), "xz -t must see the damage too");

        let dev = XzDev::open(&path, 2).unwrap();
        let bs = BS as u64;
        let mut buf = vec![0; 100];
        let e = dev.read_at(2 * bs + 10, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(
            msg.contains("xz block 2")
                && msg.contains(&format!("uncompressed offset {}", 2 * bs))
                && msg.contains(&format!("file offset {}", b2.file_offset)),
            "{msg}"
        );
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<XzError>());
        assert!(
            matches!(inner, Some(XzError::CorruptBlock { index: 2, .. })),
            "{inner:?}"
        );
        match decode_block(dev.file(), dev.index(), 2) {
            Err(e @ XzError::CorruptBlock { index: 2, .. }) => assert!(e.is_bad_input()),
            other => panic!("expected CorruptBlock, got {:?}", other.err()),
        }
        for at in [0, bs + 5, 4 * bs, 5 * bs + 1] {
            dev.read_at(at, &mut buf).unwrap();
            assert_eq!(buf, expect[at as usize..at as usize + 100]);
        }
        // A read spanning the damage fails as a whole.
        let mut wide = vec![0; 3 * BS];
        assert!(dev.read_at(bs, &mut wide).is_err());
        let e = dev
            .for_each_block(2, |_, _| Ok::<(), XzError>(()))
            .unwrap_err();
        assert!(matches!(e, XzError::CorruptBlock { index: 2, .. }), "{e}");
    }

    #[test]
    fn damaged_or_truncated_metadata_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = six_blocks(dir.path(), "-T1");
        let good = std::fs::read(&path).unwrap();
        let index = index_of(&path).unwrap();
        let last = index.blocks()[5];
        let index_at = (last.file_offset + last.total_size) as usize;
        let bad = dir.path().join("bad.xz");
        let try_bytes = |bytes: &[u8]| {
            std::fs::write(&bad, bytes).unwrap();
            (index_of(&bad), XzDev::open(&bad, 1))
        };
        // Every truncation that cuts the tail, down to nothing.
        let mut cuts: Vec<usize> = (0..good.len()).step_by(37).collect();
        cuts.extend((index_at - 8..good.len()).collect::<Vec<_>>());
        for cut in cuts {
            let (i, d) = try_bytes(&good[..cut]);
            assert!(i.is_err() && d.is_err(), "cut to {cut} bytes was accepted");
        }
        // Any changed byte of the stream header, the index or the footer.
        for pos in (0..12).chain(index_at..good.len()) {
            let mut b = good.clone();
            b[pos] ^= 0x01;
            let (i, _) = try_bytes(&b);
            let e = i.expect_err(&format!("flipped byte {pos} was accepted"));
            assert!(e.is_bad_input(), "byte {pos}: {e}");
        }
        for junk in [
            &b""[..],
            &[0u8; 64][..],
            &b"definitely not an xz file"[..],
            &[0xFD; 4096][..],
        ] {
            assert!(try_bytes(junk).0.is_err());
        }
        // A damaged block header is found when the block is decoded, not before.
        let mut b = good.clone();
        b[index.blocks()[1].file_offset as usize + 2] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        let dev = XzDev::open(&bad, 1).unwrap();
        assert!(matches!(
            dev.decode(1),
            Err(XzError::CorruptBlock { index: 1, .. })
        ));
    }

    #[test]
    fn for_each_block_yields_exactly_xz_dc_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expect) = six_blocks(dir.path(), "-T2");
        let dev = XzDev::open(&path, 4).unwrap();
        for threads in [1, 2, 3, 16] {
            let mut out = Vec::new();
            let mut seen = Vec::new();
            dev.for_each_block(threads, |b, data| {
                assert_eq!(data.len() as u64, b.uncompressed_size);
                seen.push(b.uncompressed_offset);
                out.extend_from_slice(data);
                Ok::<(), io::Error>(())
            })
            .unwrap();
            assert!(out == expect, "threads {threads}");
            let want: Vec<u64> = dev
                .index()
                .blocks()
                .iter()
                .map(|b| b.uncompressed_offset)
                .collect();
            assert_eq!(seen, want);
        }
        // The consumer's error stops the run and comes back as it was.
        let mut calls = 0;
        let e = dev
            .for_each_block(2, |_, _| {
                calls += 1;
                if calls == 2 {
                    Err(io::Error::other("sink full"))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "sink full");
        assert_eq!(calls, 2);
    }

    #[test]
    fn in_order_never_holds_more_than_threads_plus_one_results() {
        for threads in [1, 2, 4] {
            let alive = AtomicUsize::new(0);
            let peak = AtomicUsize::new(0);
            let mut got = Vec::new();
            in_order(
                50,
                threads,
                |i| {
                    let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Uneven work, so late items often finish first.
                    std::thread::sleep(std::time::Duration::from_micros(
                        ((i * 7) % 5) as u64 * 300,
                    ));
                    Ok::<usize, ()>(i)
                },
                |i, v| {
                    assert_eq!(i, v);
                    got.push(v);
                    alive.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(got, (0..50).collect::<Vec<_>>());
            assert!(
                peak.load(Ordering::SeqCst) <= threads + 1,
                "threads {threads}"
            );
        }
        let e = in_order(
            20,
            3,
            |i| if i == 7 { Err(i) } else { Ok(i) },
            |_, _| Ok(()),
        );
        assert_eq!(e, Err(7));
    }

    #[test]
    fn a_panicking_worker_panics_the_caller_instead_of_hanging_it() {
        let run = || {
            in_order(
                50,
                2,
                |i| {
                    assert!(i != 3, "worker fails on purpose");
                    Ok::<usize, ()>(i)
                },
                |_, _| Ok(()),
            )
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(std::panic::catch_unwind(run).is_err()));
        let panicked = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("in_order hung after a worker panicked");
        assert!(panicked);
    }

    #[test]
    fn written_metadata_parses_back() {
        for v in [0, 1, 127, 128, 300, 1 << 35, VLI_MAX] {
            let mut b = Vec::new();
            write_vli(&mut b, v);
            let mut pos = 0;
            assert_eq!(read_vli(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len());
        }
        let mut pos = 0;
        assert_eq!(
            read_vli(&[0x80, 0x00], &mut pos),
            None,
            "overlong encodings are invalid"
        );
        let mut pos = 0;
        assert_eq!(read_vli(&[0xFF; 10], &mut pos), None);

        let records = [(1000, 65536), (5, 1), (UNPADDED_MAX, VLI_MAX)];
        let raw = index_bytes(&records);
        assert_eq!(raw.len() % 4, 0);
        assert_eq!(parse_index(&raw, 0).unwrap(), records);
        let footer = stream_footer(10, raw.len() as u64).unwrap();
        assert_eq!(stream_flags(&footer[8..10]), Some(10));
        assert_eq!(crc32(&footer[4..10]), le32(&footer[..4]));
        assert_eq!((u64::from(le32(&footer[4..8])) + 1) * 4, raw.len() as u64);
        let header = stream_header(10);
        assert_eq!(header[..6], HEADER_MAGIC);
        assert_eq!(header[6..8], footer[8..10]);
        assert!(stream_footer(4, 6).is_none());
    }
}
