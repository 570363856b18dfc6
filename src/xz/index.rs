//! The index of an `.xz` file: every block's place in the file and in the decoded image, read
//! from the indexes and footers at the end of its streams, walking back stream by stream; and
//! the index of a stream being written.

use std::fs::File;
use std::io;
use std::ops::Range;

use super::check::{check_name, crc32};
use super::error::{XzError, format_err};
use super::pread::read_exact_at;
use super::stream::{
    FOOTER_MAGIC, HEADER_MAGIC, MIN_STREAM, STREAM_HEADER_SIZE, le32, round4, stream_flags,
};
use super::vli::{VLI_MAX, read_vli, write_vli};

/// Largest index accepted: about a million blocks. Anything bigger is damage, not an image, and
/// would otherwise make a small file ask for a huge allocation.
const MAX_INDEX: u64 = 64 << 20;
/// Bounds the format puts on a block's Unpadded Size.
const UNPADDED_MIN: u64 = 5;
const UNPADDED_MAX: u64 = VLI_MAX & !3;
/// How much of the file's tail is scanned at once for stream padding.
const PADDING_SCAN: usize = 64 << 10;

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
    pub(crate) fn get(&self, i: usize) -> Result<&XzBlock, XzError> {
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

/// The index of a stream whose blocks have these (unpadded, uncompressed) sizes.
pub fn index_bytes(records: &[(u64, u64)]) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::super::reader::XzReader;
    use super::super::stream::{stream_footer, stream_header};
    use super::super::testutil::*;
    use super::*;

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
        let dev = XzReader::open(&path, 2).unwrap();
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
            (index_of(&bad), XzReader::open(&bad, 1))
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
        let dev = XzReader::open(&bad, 1).unwrap();
        assert!(matches!(
            dev.decode(1),
            Err(XzError::CorruptBlock { index: 1, .. })
        ));
    }

    #[test]
    fn written_metadata_parses_back() {
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
