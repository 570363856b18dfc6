//! One edited xz block rebuilt from its base block, keeping the LZMA2 chunks the edit left valid.
//!
//! An xz block's data is an LZMA2 stream: a run of chunks of at most 2 MiB decoded each. An
//! uncompressed chunk depends on nothing. A compressed chunk decodes against what came before it:
//! the dictionary (the block's last `dict` decoded bytes) and, unless its control byte resets it,
//! the LZMA model (probabilities, recent match distances). So a base chunk whose own bytes the
//! edit did not change decodes the same inside the edited block when the decoder reaches it in
//! the state the base's encoder left, which holds when
//! - it follows a base chunk that was copied too (same model, same dictionary), or
//! - it resets the model and no byte within `dict` before it changed (same dictionary).
//!
//! Such chunks are copied as they are. Where the base stored chunks uncompressed (its encoder
//! gained nothing there: random or already-compressed data), the edited bytes are stored the same
//! way, without running LZMA over them again. Everything else is compressed again, each stretch
//! as its own LZMA2 run that resets the model and starts from the edited bytes before it as
//! preset dictionary, so its matches still reach back past the stretch's start.
//!
//! Typically the edit touches a few pages of a 24 MiB block: everything before the first change
//! is copied, and only the rest of the block's compressible data goes through the encoder. The
//! caller decodes the result and compares it with the edited bytes before using it.

use std::ops::Range;

use super::check::{check_size, check_value};
use super::decoder::lone_lzma2;
use super::encoder::{DEFAULT_PROPS, block_header, encode_run};
use super::lzma2::{Chunk, parse};

/// Most bytes one uncompressed LZMA2 chunk holds.
const STORED_CHUNK: usize = 1 << 16;

/// A block rebuilt by [`splice`].
pub struct Spliced {
    /// The whole block: header, data, padding and check.
    pub block: Vec<u8>,
    /// Its size without the padding, as the index records it.
    pub unpadded: u64,
    /// Compressed bytes of base chunks copied as they were.
    pub kept: u64,
    /// Decoded bytes compressed again.
    pub encoded: u64,
}

impl std::fmt::Debug for Spliced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spliced")
            .field("block_len", &self.block.len())
            .field("unpadded", &self.unpadded)
            .field("kept", &self.kept)
            .field("encoded", &self.encoded)
            .finish()
    }
}

/// What to write for a stretch of the edited block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Base chunks `k..l`, copied.
    Copy(Range<usize>),
    /// These decoded bytes, as uncompressed chunks.
    Store(Range<usize>),
    /// These decoded bytes, compressed again.
    Encode(Range<usize>),
}

/// Rebuild the base block `raw` (header to check, check type `check`) so that it decodes to
/// `edited`, which differs from the base's bytes only within `changed` (sorted, disjoint
/// ranges). `Ok(None)` when the block is not one this can splice: a filter chain other than a
/// lone LZMA2, a check type it cannot compute, or an LZMA2 stream that resets its dictionary
/// mid-way or changes properties. Callers compress such blocks whole.
pub fn splice(
    raw: &[u8],
    check: u8,
    edited: &[u8],
    changed: &[Range<usize>],
) -> Result<Option<Spliced>, String> {
    let Some((header_size, dict)) = lone_lzma2(raw, check) else {
        return Ok(None);
    };
    let Some(check_size) = check_size(check) else {
        return Ok(None);
    };
    // The stream ends with its end marker; up to 3 bytes of padding and the check follow.
    let Some(lzma2) = raw.get(header_size..raw.len().saturating_sub(check_size)) else {
        return Ok(None);
    };
    let Some((chunks, props)) = parse(lzma2) else {
        return Ok(None);
    };
    if chunks.last().map_or(0, |c| c.data.end) != edited.len() {
        return Ok(None);
    }
    let props = props.unwrap_or(DEFAULT_PROPS);
    let mut data: Vec<u8> = Vec::new();
    // Room for the header (at most 1 KiB), padding and check too, so the block is built in this
    // one buffer: rebuilt blocks are up to 24 MiB and several are in flight at once.
    data.try_reserve(lzma2.len() + STORED_CHUNK + 1024 + 3 + check_size)
        .map_err(|_| "out of memory for a rebuilt block".to_string())?;
    let (mut kept, mut encoded) = (0u64, 0u64);
    for piece in plan(&chunks, changed, dict as usize) {
        match piece {
            Piece::Copy(ks) => {
                let first = &chunks[ks.start];
                let span = &lzma2[first.raw.start..chunks[ks.end - 1].raw.end];
                if first.resets_model() && first.control < 0xC0 {
                    // The model resets with the properties it last had, and what precedes the
                    // copy here (stored chunks, say) may not have declared them: declare them.
                    data.push(0xC0 | (first.control & 0x1F));
                    data.extend_from_slice(&span[1..5]);
                    data.push(props);
                    data.extend_from_slice(&span[5..]);
                } else {
                    data.extend_from_slice(span);
                }
                kept += span.len() as u64;
            }
            Piece::Store(r) => {
                for (n, part) in edited[r.clone()].chunks(STORED_CHUNK).enumerate() {
                    // Only the block's very first chunk resets the (empty) dictionary.
                    data.push(if r.start == 0 && n == 0 { 1 } else { 2 });
                    data.extend_from_slice(&((part.len() - 1) as u16).to_be_bytes());
                    data.extend_from_slice(part);
                }
            }
            Piece::Encode(r) => {
                encode_run(edited, r.clone(), dict, props, &mut data)?;
                encoded += r.len() as u64;
            }
        }
    }
    data.push(0x00);
    let header = block_header(dict, data.len(), edited.len(), check)?;
    let unpadded = (header.len() + data.len() + check_size) as u64;
    let mut block = data;
    block.splice(0..0, header);
    block.resize(block.len().next_multiple_of(4), 0);
    block.extend_from_slice(&check_value(check, edited));
    Ok(Some(Spliced {
        block,
        unpadded,
        kept,
        encoded,
    }))
}
/// Whether any of `changed` (sorted, disjoint) overlaps `r`.
fn hit(changed: &[Range<usize>], r: Range<usize>) -> bool {
    let i = changed.partition_point(|c| c.end <= r.start);
    !r.is_empty() && changed.get(i).is_some_and(|c| c.start < r.end)
}

/// What to write for each stretch of the edited block (see the module documentation), with
/// neighbouring pieces of one kind merged.
fn plan(chunks: &[Chunk], changed: &[Range<usize>], dict: usize) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    for (k, c) in chunks.iter().enumerate() {
        let piece = if !c.compressed() {
            Piece::Store(c.data.clone())
        } else {
            let clean = !hit(changed, c.data.clone());
            let follows_copy = matches!(pieces.last(), Some(Piece::Copy(r)) if r.end == k);
            let window = c.data.start.saturating_sub(dict)..c.data.start;
            let fresh = c.resets_model() && !hit(changed, window);
            if clean && (follows_copy || fresh) {
                Piece::Copy(k..k + 1)
            } else {
                Piece::Encode(c.data.clone())
            }
        };
        match (pieces.last_mut(), piece) {
            (Some(Piece::Copy(a)), Piece::Copy(b)) if a.end == b.start => a.end = b.end,
            (Some(Piece::Store(a)), Piece::Store(b)) => a.end = b.end,
            (Some(Piece::Encode(a)), Piece::Encode(b)) => a.end = b.end,
            (_, piece) => pieces.push(piece),
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::super::decoder::decode_raw;
    use super::super::encoder::{lzma_options, lzma2_chain};
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

    fn decoded(s: &Spliced, len: usize, check: u8) -> Vec<u8> {
        let b = XzBlock {
            file_offset: 0,
            total_size: s.block.len() as u64,
            unpadded_size: s.unpadded,
            uncompressed_offset: 0,
            uncompressed_size: len as u64,
        };
        decode_raw(&s.block, &b, 0, check).expect("the spliced block decodes")
    }

    fn chunk(control: u8, data: Range<usize>) -> Chunk {
        Chunk {
            control,
            raw: data.clone(),
            data,
        }
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

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one changed range is the common case
    fn plan_keeps_the_chunks_the_edit_left_valid() {
        let chunks = [
            chunk(0xE0, 0..100),
            chunk(0x80, 100..200),
            chunk(0x02, 200..300),
            chunk(0xA0, 300..400),
            chunk(0x80, 400..500),
            chunk(0x80, 500..600),
        ];
        use Piece::*;
        let plan = |changed: &[Range<usize>]| super::plan(&chunks, changed, 150);
        assert_eq!(plan(&[]), [Copy(0..2), Store(200..300), Copy(3..6)]);
        // The model reset at 300 looks back to 150: a change before that does not matter.
        assert_eq!(
            plan(&[120..121]),
            [Copy(0..1), Encode(100..200), Store(200..300), Copy(3..6)]
        );
        // One within the window does, and what follows an encoded chunk is encoded too.
        assert_eq!(
            plan(&[150..151]),
            [
                Copy(0..1),
                Encode(100..200),
                Store(200..300),
                Encode(300..600)
            ]
        );
        assert_eq!(
            plan(&[250..251]),
            [Copy(0..2), Store(200..300), Encode(300..600)]
        );
        assert_eq!(
            plan(&[450..451]),
            [Copy(0..2), Store(200..300), Copy(3..4), Encode(400..600)]
        );
        assert_eq!(
            plan(&[0..1, 599..600]),
            [
                Encode(0..200),
                Store(200..300),
                Copy(3..5),
                Encode(500..600)
            ]
        );
    }

    /// Wrap one block in an xz stream and decode it with the `xz` program.
    fn xz_decodes(s: &Spliced, len: usize, check: u8) -> Vec<u8> {
        let index = index_bytes(&[(s.unpadded, len as u64)]);
        let mut file = stream_header(check).to_vec();
        file.extend_from_slice(&s.block);
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
        assert!(out.status.success(), "xz rejects the spliced block");
        out.stdout
    }

    #[test]
    fn spliced_blocks_decode_with_xz_for_every_check_type() {
        let data = sample(4 << 20, 11);
        let edits = [(1 << 20, 4096), (2 << 20, 1), ((3 << 20) + 5, 300)];
        let (edited, changed) = edit(&data, &edits);
        for check in [0, 1, 4, 10] {
            let (block, _) = encode(&data, 1 << 20, check, false);
            let s = splice(&block, check, &edited, &changed).unwrap().unwrap();
            assert!(
                xz_decodes(&s, edited.len(), check) == edited,
                "check {check}"
            );
            // Everything before the first change is kept, and far from all of it is encoded.
            assert!(s.kept > 0, "{s:?}");
            assert!(s.encoded < (3 << 20), "{s:?}");
        }
    }

    #[test]
    fn a_model_reset_far_enough_after_the_last_change_resumes_copying() {
        // A small dictionary lets the base's resets after stored stretches be reused.
        let data = sample(4 << 20, 3);
        let (block, unpadded) = encode(&data, 64 << 10, CRC64, false);
        let (edited, changed) = edit(&data, &[(100_000, 10)]);
        let s = splice(&block, CRC64, &edited, &changed).unwrap().unwrap();
        assert_eq!(xz_decodes(&s, edited.len(), CRC64), edited);

        let (header, _) = lone_lzma2(&block, CRC64).unwrap();
        let (chunks, _) = parse(&block[header..unpadded as usize - 8]).unwrap();
        let pieces = plan(&chunks, &changed, 64 << 10);
        let first_encode = pieces.iter().position(|p| matches!(p, Piece::Encode(_)));
        let copies_after = pieces[first_encode.unwrap()..]
            .iter()
            .filter(|p| matches!(p, Piece::Copy(_)))
            .count();
        assert!(copies_after > 0, "{pieces:?}");
        let compressible: usize = chunks
            .iter()
            .filter(|c| c.compressed() && c.data.end > 100_000)
            .map(|c| c.data.len())
            .sum();
        assert!((s.encoded as usize) < compressible / 2, "{s:?}");
    }

    #[test]
    fn blocks_with_other_filters_are_left_to_the_caller() {
        let data = sample(1 << 20, 5);
        let (block, _) = encode(&data, 1 << 20, CRC64, true);
        let (edited, changed) = edit(&data, &[(10, 10)]);
        assert!(splice(&block, CRC64, &edited, &changed).unwrap().is_none());
        assert!(splice(&[], CRC64, &edited, &changed).unwrap().is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn any_edit_splices_to_a_block_that_decodes_to_it(
            seed in 1u64..1000,
            dict_kib in prop::sample::select(vec![64u32, 256, 1024]),
            edits in prop::collection::vec((0usize..(1 << 20), 1usize..20_000), 1..5),
        ) {
            let data = sample(1 << 20, seed);
            let (block, _) = encode(&data, dict_kib << 10, CRC64, false);
            let (edited, changed) = edit(&data, &edits);
            let s = splice(&block, CRC64, &edited, &changed).unwrap().unwrap();
            prop_assert!(decoded(&s, edited.len(), CRC64) == edited);
        }
    }
}
