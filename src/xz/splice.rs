//! An edited xz block rewritten as a run of smaller blocks, so that what several builds of one
//! base have in common is compressed once.
//!
//! An xz block's data is an LZMA2 stream: chunks of at most 2 MiB decoded each, every compressed
//! one decoding against the dictionary and model the chunks before it left. The base's chunks
//! before an edit's first change therefore still decode right as the start of a block, and none
//! after it can be trusted to: from there on the bytes are compressed again. [`layout`] says how:
//! - the prefix, the base's chunks before the first change, copied into a block of their own;
//! - pieces holding the changes, cut on a [`FINE`] grid of the block's offsets;
//! - pieces of unchanged bytes between them, cut at the changed pieces and on a [`COARSE`] grid.
//!
//! Each piece becomes an xz block of its own (own dictionary, own check), so any decoder reads
//! the result and it stays randomly accessible. A piece's bounds depend only on where the
//! changes are and an unchanged piece's bytes only on the base, so builds of one base that
//! changed the same areas (the workers of a cluster) lay out the same unchanged pieces, and the
//! caller compresses each of those once for all of them. A piece the base stored uncompressed
//! (random or already-compressed data) is stored again: LZMA would spend seconds per MiB there
//! finding nothing. The price of cutting is a little compression, since no match reaches back
//! past a piece's start; it is paid only on the few blocks an edit touches.

use std::ops::Range;

use super::check::{check_size, check_value};
use super::decoder::lone_lzma2;
use super::encoder::block_header;
use super::lzma2::{Chunk, parse};

/// The grid changed pieces are cut on: small, since every build compresses its own.
pub const FINE: usize = 32 << 10;

/// The largest piece: small enough to compress on every core, large enough to compress well.
pub const COARSE: usize = 1 << 20;

/// The base's chunks before the first change, as a block of their own.
pub struct Prefix {
    /// The whole block: header, data, padding and check.
    pub block: Vec<u8>,
    /// Its size without the padding, as the index records it.
    pub unpadded: u64,
    /// Decoded bytes it holds: the edited block's first `len`.
    pub len: usize,
    /// Compressed bytes of base chunks it copies.
    pub kept: u64,
}

impl std::fmt::Debug for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefix")
            .field("block_len", &self.block.len())
            .field("unpadded", &self.unpadded)
            .field("len", &self.len)
            .field("kept", &self.kept)
            .finish()
    }
}

/// A stretch of the edited block written as a block of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Its bytes, as offsets into the block.
    pub range: Range<usize>,
    /// Whether the edit changed any of them (else they are the base's).
    pub changed: bool,
    /// Whether to store them uncompressed, as the base did.
    pub stored: bool,
}

/// How an edited block is written: the prefix (if any base chunk could be kept), then the pieces,
/// which cover the rest of the block in order.
#[derive(Debug)]
pub struct Layout {
    /// The kept base chunks.
    pub prefix: Option<Prefix>,
    /// The rest of the block.
    pub pieces: Vec<Piece>,
    /// Whether the base block's chunks could be read (a lone LZMA2 filter, a known check).
    pub read_chunks: bool,
}

/// Lay out the base block `raw` (header to check, check type `check`) edited into `edited`,
/// which differs from the base's bytes only within `changed` (sorted, disjoint ranges). A block
/// whose chunks cannot be read (another filter chain, a check type this cannot compute, an LZMA2
/// stream that resets its dictionary mid-way) keeps no prefix, and its pieces are stored when
/// `incompressible`.
pub fn layout(
    raw: &[u8],
    check: u8,
    edited: &[u8],
    changed: &[Range<usize>],
    incompressible: bool,
) -> Result<Layout, String> {
    let Some((chunks, lzma2, dict)) = chunks_of(raw, check, edited.len()) else {
        let pieces = cut(0, edited.len(), changed)
            .into_iter()
            .map(|(range, changed)| Piece {
                range,
                changed,
                stored: incompressible,
            })
            .collect();
        return Ok(Layout {
            prefix: None,
            pieces,
            read_chunks: false,
        });
    };
    let first = changed
        .first()
        .map_or(edited.len(), |c| c.start / FINE * FINE);
    let keep = chunks.partition_point(|c| c.data.end <= first);
    let prefix = match keep.checked_sub(1).map(|k| &chunks[k]) {
        Some(last) => Some(prefix(
            &lzma2[..last.raw.end],
            dict,
            check,
            &edited[..last.data.end],
        )?),
        None => None,
    };
    let from = prefix.as_ref().map_or(0, |p| p.len);
    let mut pieces = Vec::new();
    let hit = |r: &Range<usize>| changed.iter().any(|c| c.start < r.end && r.start < c.end);
    for (range, _) in cut(from, edited.len(), changed) {
        // Cut again where the base switches between stored and compressed chunks, so what it
        // stored is stored again and what it compressed is compressed.
        let mut start = range.start;
        let first = chunks.partition_point(|c| c.data.end <= range.start);
        for pair in chunks[first..].windows(2) {
            let at = pair[1].data.start;
            if at >= range.end {
                break;
            }
            if pair[0].compressed() != pair[1].compressed() && at > start {
                pieces.push(Piece {
                    stored: stored(&chunks, &(start..at)),
                    changed: hit(&(start..at)),
                    range: start..at,
                });
                start = at;
            }
        }
        pieces.push(Piece {
            stored: stored(&chunks, &(start..range.end)),
            changed: hit(&(start..range.end)),
            range: start..range.end,
        });
    }
    Ok(Layout {
        prefix,
        pieces,
        read_chunks: true,
    })
}

/// The chunks of a lone-LZMA2 block decoding to `len` bytes, its LZMA2 stream and dictionary.
fn chunks_of(raw: &[u8], check: u8, len: usize) -> Option<(Vec<Chunk>, &[u8], u32)> {
    let (header_size, dict) = lone_lzma2(raw, check)?;
    let check_size = check_size(check)?;
    // The stream ends with its end marker; up to 3 bytes of padding and the check follow.
    let lzma2 = raw.get(header_size..raw.len().saturating_sub(check_size))?;
    let (chunks, _) = parse(lzma2)?;
    (chunks.last().map_or(0, |c| c.data.end) == len).then_some((chunks, lzma2, dict))
}

/// A block of the LZMA2 chunks `kept` (a prefix of the base's stream), which decode to `data`.
fn prefix(kept: &[u8], dict: u32, check: u8, data: &[u8]) -> Result<Prefix, String> {
    let check_size = check_size(check).unwrap_or(0);
    let header = block_header(dict, kept.len() + 1, data.len(), check)?;
    let mut block: Vec<u8> = Vec::new();
    block
        .try_reserve(header.len() + kept.len() + 4 + check_size)
        .map_err(|_| "out of memory for a rebuilt block".to_string())?;
    block.extend_from_slice(&header);
    block.extend_from_slice(kept);
    // The end marker: any prefix of a valid chunk sequence is a valid stream once it ends.
    block.push(0x00);
    let unpadded = (block.len() + check_size) as u64;
    block.resize(block.len().next_multiple_of(4), 0);
    block.extend_from_slice(&check_value(check, data));
    Ok(Prefix {
        block,
        unpadded,
        len: data.len(),
        kept: kept.len() as u64,
    })
}

/// Whether every base chunk overlapping `r` was stored uncompressed.
fn stored(chunks: &[Chunk], r: &Range<usize>) -> bool {
    let first = chunks.partition_point(|c| c.data.end <= r.start);
    chunks[first..]
        .iter()
        .take_while(|c| c.data.start < r.end)
        .all(|c| !c.compressed())
}

/// `from..len` cut into pieces (see the module documentation), each with whether any of
/// `changed` (sorted, disjoint) overlaps it.
fn cut(from: usize, len: usize, changed: &[Range<usize>]) -> Vec<(Range<usize>, bool)> {
    let up = |at: usize, grid: usize| (at / grid + 1) * grid;
    let mut pieces = Vec::new();
    let (mut pos, mut next) = (from, 0usize);
    while pos < len {
        // `next`: the first change that ends after `pos`.
        while changed.get(next).is_some_and(|c| c.end <= pos) {
            next += 1;
        }
        let limit = up(pos, COARSE).min(len);
        let hit = changed.get(next).map(|c| c.start.max(pos));
        let end = match hit {
            Some(at) if at < up(pos, FINE) => {
                // Changed: this unit and every following one a change reaches, up to `limit`.
                let mut end = up(pos, FINE);
                loop {
                    while changed.get(next).is_some_and(|c| c.end <= end) {
                        next += 1;
                    }
                    match changed.get(next) {
                        Some(c) if end < limit && c.start < end + FINE => end += FINE,
                        _ => break,
                    }
                }
                pieces.push((pos..end.min(limit), true));
                end.min(limit)
            }
            _ => {
                let end = hit.map_or(limit, |at| (at / FINE * FINE).min(limit));
                pieces.push((pos..end, false));
                end
            }
        };
        pos = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::super::decoder::decode_raw;
    use super::super::encoder::{DEFAULT_PROPS, encode_block, lzma_options, lzma2_chain};
    use super::super::index::{XzBlock, index_bytes};
    use super::super::lzma2::resets_dictionary;
    use super::super::stream::{stream_footer, stream_header};
    use super::*;
    use liblzma_sys as sys;
    use proptest::prelude::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const CRC64: u8 = 4;

    /// Deterministic bytes shaped like a disk: text that compresses, random runs that do not
    /// (stored by LZMA2), and zeros.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let words = [
            "ext4 ",
            "inode ",
            "dnsmasq ",
            "eth0 ",
            "192.168.5.1 ",
            "\n",
            "lease ",
        ];
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let run = 20_000 + (next() % 150_000) as usize;
            match next() % 3 {
                0 => (0..run / 6).for_each(|_| out.extend(words[(next() % 7) as usize].bytes())),
                1 => (0..run / 8).for_each(|_| out.extend(next().to_le_bytes())),
                _ => out.resize(out.len() + run / 4, 0),
            }
        }
        out.truncate(len);
        out
    }

    /// `data` as one xz block with an LZMA2 dictionary of `dict`, as xz writes blocks; the
    /// block and its unpadded size.
    fn encode(data: &[u8], dict: u32, check: u8, x86: bool) -> (Vec<u8>, u64) {
        let mut lzma = lzma_options(dict, DEFAULT_PROPS).unwrap();
        let [lzma2, end] = lzma2_chain(&mut lzma);
        let bcj = sys::lzma_filter {
            id: sys::LZMA_FILTER_X86,
            options: std::ptr::null_mut(),
        };
        let mut filters = if x86 {
            vec![bcj, lzma2, end]
        } else {
            vec![lzma2, end]
        };
        // SAFETY: all-zero is a valid lzma_block; the fields the encoder reads are set below,
        // and every pointer given to liblzma outlives the calls.
        let mut block: sys::lzma_block = unsafe { std::mem::zeroed() };
        block.version = 1;
        block.check = sys::lzma_check::from(check);
        block.filters = filters.as_mut_ptr();
        // SAFETY: a pure function of its integer argument.
        let bound = unsafe { sys::lzma_block_buffer_bound(data.len()) };
        let mut out = vec![0u8; bound];
        let mut pos = 0;
        // SAFETY: `block` and its filter chain are initialised above and outlive the call; the
        // input and output pointers describe `data` and `out` (of `bound` bytes), and `pos` is
        // the output position liblzma advances.
        let ret = unsafe {
            sys::lzma_block_buffer_encode(
                &mut block,
                std::ptr::null(),
                data.as_ptr(),
                data.len(),
                out.as_mut_ptr(),
                &mut pos,
                bound,
            )
        };
        assert_eq!(ret, sys::LZMA_OK);
        out.truncate(pos);
        // SAFETY: `block` was just filled in by a successful encode.
        (out, unsafe { sys::lzma_block_unpadded_size(&block) })
    }

    /// `data` with each `(offset, len)` stretch inverted, and the stretches as changed ranges.
    fn edit(data: &[u8], edits: &[(usize, usize)]) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut edited = data.to_vec();
        let mut changed: Vec<Range<usize>> = Vec::new();
        for &(at, len) in edits {
            let r = at.min(data.len() - 1)..(at + len).min(data.len());
            edited[r.clone()].iter_mut().for_each(|b| *b = !*b);
            changed.push(r);
        }
        changed.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::new();
        for r in changed {
            match merged.last_mut() {
                Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
                _ => merged.push(r),
            }
        }
        (edited, merged)
    }

    #[test]
    fn parse_reads_the_chunks_liblzma_writes() {
        let data = sample(3 << 20, 7);
        let (block, unpadded) = encode(&data, 1 << 20, CRC64, false);
        let (header, dict) = lone_lzma2(&block, CRC64).unwrap();
        assert_eq!(dict, 1 << 20);
        let lzma2 = &block[header..unpadded as usize - 8];
        let (chunks, props) = parse(lzma2).expect("liblzma's own stream parses");
        assert_eq!(props, Some(DEFAULT_PROPS));
        assert!(resets_dictionary(chunks[0].control));
        assert!(chunks.iter().any(|c| !c.compressed()), "{chunks:?}");
        assert!(chunks.iter().filter(|c| c.compressed()).count() > 1);
        for pair in chunks.windows(2) {
            assert_eq!(pair[0].data.end, pair[1].data.start);
            assert_eq!(pair[0].raw.end, pair[1].raw.start);
        }
        let last = chunks.last().unwrap();
        assert_eq!(last.data.end, data.len());
        assert_eq!(lzma2[last.raw.end], 0, "the end marker follows");
        assert_eq!(last.raw.end + 1, lzma2.len());
        assert_eq!(parse(&lzma2[..last.raw.end - 1]), None, "truncated");
    }

    /// The blocks `l` lays out for `edited`, pieces encoded: (block, unpadded, decoded length).
    fn blocks(l: &Layout, edited: &[u8], check: u8) -> Vec<(Vec<u8>, u64, usize)> {
        let mut out = Vec::new();
        if let Some(p) = &l.prefix {
            out.push((p.block.clone(), p.unpadded, p.len));
        }
        for piece in &l.pieces {
            let (b, u) = encode_block(&edited[piece.range.clone()], check, piece.stored).unwrap();
            out.push((b, u, piece.range.len()));
        }
        out
    }

    /// Each block decoded on its own by our decoder, concatenated.
    fn decoded(blocks: &[(Vec<u8>, u64, usize)], check: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, (block, unpadded, len)) in blocks.iter().enumerate() {
            let b = XzBlock {
                file_offset: 0,
                total_size: block.len() as u64,
                unpadded_size: *unpadded,
                uncompressed_offset: 0,
                uncompressed_size: *len as u64,
            };
            out.extend(decode_raw(block, &b, k, check).expect("every laid-out block decodes"));
        }
        out
    }

    /// The pieces cover `from..len` in order, without gaps.
    fn covers(l: &Layout, len: usize) {
        let mut at = l.prefix.as_ref().map_or(0, |p| p.len);
        for p in &l.pieces {
            assert_eq!(p.range.start, at, "{l:?}");
            assert!(p.range.len() <= COARSE, "{p:?}");
            at = p.range.end;
        }
        assert_eq!(at, len, "{l:?}");
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one changed range is the common case
    fn pieces_fall_on_the_grids_and_only_changed_ones_are_marked() {
        let (f, c) = (FINE, COARSE);
        let len = 3 * c + 100;
        assert_eq!(
            cut(0, len, &[]),
            vec![
                (0..c, false),
                (c..2 * c, false),
                (2 * c..3 * c, false),
                (3 * c..len, false)
            ]
        );
        // One byte changed: its fine unit alone, the rest on the coarse grid.
        assert_eq!(
            cut(0, 2 * c, &[5 * f + 3..5 * f + 4]),
            vec![
                (0..5 * f, false),
                (5 * f..6 * f, true),
                (6 * f..c, false),
                (c..2 * c, false)
            ]
        );
        // Changes in neighbouring units share a piece; one unit apart they do not.
        assert_eq!(
            cut(
                0,
                c,
                &[f - 1..f + 1, 2 * f + 7..2 * f + 8, 4 * f..4 * f + 1]
            ),
            vec![
                (0..3 * f, true),
                (3 * f..4 * f, false),
                (4 * f..5 * f, true),
                (5 * f..c, false)
            ]
        );
        // A change across the coarse grid is cut there; a start off the grid is kept.
        assert_eq!(
            cut(c - f - 10, 2 * c, &[c - 1..c + 1]),
            vec![
                (c - f - 10..c - f, false),
                (c - f..c, true),
                (c..c + f, true),
                (c + f..2 * c, false)
            ]
        );
        assert_eq!(cut(7, 7, &[0..1]), vec![]);
        assert_eq!(
            cut(10, 20, &[0..15]),
            vec![(10..20, true)],
            "the partial last unit"
        );
    }

    #[test]
    fn laid_out_blocks_decode_with_xz_for_every_check_type() {
        let data = sample(4 << 20, 11);
        let edits = [(1 << 20, 4096), (2 << 20, 1), ((3 << 20) + 5, 300)];
        let (edited, changed) = edit(&data, &edits);
        for check in [0, 1, 4, 10] {
            let (block, _) = encode(&data, 1 << 20, check, false);
            let l = layout(&block, check, &edited, &changed, false).unwrap();
            covers(&l, edited.len());
            assert!(l.read_chunks);
            // Everything before the first change's unit is kept, in at least one chunk.
            let p = l.prefix.as_ref().expect("a prefix");
            assert!(p.kept > 0 && p.len <= 1 << 20, "{p:?}");
            let blocks = blocks(&l, &edited, check);
            assert!(xz_decodes(&blocks, check) == edited, "check {check}");
            // Unchanged pieces hold the base's bytes, and changed ones are few and small.
            for piece in &l.pieces {
                if !piece.changed {
                    assert!(data[piece.range.clone()] == edited[piece.range.clone()]);
                }
            }
            let changed_bytes: usize = l
                .pieces
                .iter()
                .filter(|p| p.changed)
                .map(|p| p.range.len())
                .sum();
            assert!(changed_bytes <= 4 * FINE, "{l:?}");
        }
    }

    #[test]
    fn what_the_base_stored_is_stored_again() {
        // sample() mixes text, random runs (which LZMA2 stores) and zeros.
        let data = sample(3 << 20, 7);
        let (block, unpadded) = encode(&data, 1 << 20, CRC64, false);
        let (header, _) = lone_lzma2(&block, CRC64).unwrap();
        let (chunks, _) = parse(&block[header..unpadded as usize - 8]).unwrap();
        let (edited, changed) = edit(&data, &[(10, 1)]);
        let l = layout(&block, CRC64, &edited, &changed, false).unwrap();
        assert!(l.prefix.is_none(), "the change is in the first chunk");
        assert!(l.pieces.iter().any(|p| p.stored), "{l:?}");
        assert!(l.pieces.iter().any(|p| !p.stored), "{l:?}");
        for p in l.pieces.iter().filter(|p| p.stored) {
            for c in chunks
                .iter()
                .filter(|c| c.data.start < p.range.end && p.range.start < c.data.end)
            {
                assert!(!c.compressed(), "{p:?} overlaps compressed {c:?}");
            }
        }
        assert_eq!(decoded(&blocks(&l, &edited, CRC64), CRC64), edited);
    }

    #[test]
    fn blocks_with_other_filters_keep_no_chunk_but_still_lay_out() {
        let data = sample(1 << 20, 5);
        let (block, _) = encode(&data, 1 << 20, CRC64, true);
        let (edited, changed) = edit(&data, &[(200_000, 10)]);
        for incompressible in [false, true] {
            let l = layout(&block, CRC64, &edited, &changed, incompressible).unwrap();
            assert!(!l.read_chunks && l.prefix.is_none());
            covers(&l, edited.len());
            assert!(l.pieces.iter().all(|p| p.stored == incompressible));
            assert_eq!(decoded(&blocks(&l, &edited, CRC64), CRC64), edited);
        }
        let l = layout(&[], CRC64, &edited, &changed, false).unwrap();
        assert!(!l.read_chunks);
        covers(&l, edited.len());
    }

    /// Wrap blocks in one xz stream and decode it with the `xz` program.
    fn xz_decodes(blocks: &[(Vec<u8>, u64, usize)], check: u8) -> Vec<u8> {
        let records: Vec<(u64, u64)> = blocks.iter().map(|(_, u, l)| (*u, *l as u64)).collect();
        let index = index_bytes(&records);
        let mut file = stream_header(check).to_vec();
        for (b, _, _) in blocks {
            file.extend_from_slice(b);
        }
        file.extend_from_slice(&index);
        file.extend_from_slice(&stream_footer(check, index.len() as u64).unwrap());
        let mut xz = Command::new("xz")
            .args(["-dc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz runs");
        let mut stdin = xz.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&file));
        let out = xz.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success(), "xz rejects the laid-out blocks");
        out.stdout
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn any_edit_lays_out_to_blocks_that_decode_to_it(
            seed in 1u64..1000,
            dict_kib in prop::sample::select(vec![64u32, 256, 1024]),
            edits in prop::collection::vec((0usize..(1 << 20), 1usize..20_000), 1..5),
        ) {
            let data = sample(1 << 20, seed);
            let (block, _) = encode(&data, dict_kib << 10, CRC64, false);
            let (edited, changed) = edit(&data, &edits);
            let l = layout(&block, CRC64, &edited, &changed, false).unwrap();
            covers(&l, edited.len());
            if let Some(p) = &l.prefix {
                prop_assert!(p.len <= changed[0].start);
            }
            for piece in &l.pieces {
                let hit = changed.iter().any(|c| c.start < piece.range.end && piece.range.start < c.end);
                prop_assert_eq!(piece.changed, hit, "{:?}", piece);
            }
            prop_assert!(decoded(&blocks(&l, &edited, CRC64), CRC64) == edited);
        }
    }
}
