//! `.img.xz` from an `.img.xz` base: only what an edit touched is compressed again.
//!
//! Raspberry Pi OS ships its images as independent 24 MiB xz blocks, and a build changes a few
//! MiB of them. Recompressing the whole image at preset 6 takes minutes; here every base block
//! that no changed chunk of the [`CowDisk`] overlaps is copied byte for byte (header, data,
//! padding and check). The others are decoded, the edits laid over them, and, where their bytes
//! really changed, rewritten as the `splice` module lays them out: the base's LZMA2 chunks before
//! the first change kept in a block of their own, the rest in pieces of at most 1 MiB, each its
//! own block, compressed on every core. Every new block is decoded and compared with the edited
//! bytes before it is used. The output is one stream with the base's check type, still randomly
//! accessible; every base block boundary is a boundary in it, and a touched block's range is
//! covered by its pieces. It depends only on the base and the edits: the same inputs give the
//! same bytes whatever the thread count, and whether a piece was compressed here or reused.
//!
//! Builds of one base can share a [`Pieces`]: the unchanged pieces they lay out alike (the
//! workers of a cluster change the same areas) are then compressed once, and a touched base
//! block is decoded once, for all of them.
//!
//! Corrupt data in the base: a block an edit touches is decoded and checked, so damage there
//! stops the write with [`crate::xz::XzError::CorruptBlock`] and nothing is left at the
//! destination. An untouched block is copied without being decoded: checking it would cost as
//! much as decoding the whole image, which is what this module exists to avoid. Its damage is
//! then carried over unchanged, together with the block's original integrity check, so it stays
//! exactly as detectable as in the base (`xz -t`, or any decoder, rejects it); it is never
//! re-wrapped under a fresh, matching check. Bases are expected to have been verified when they
//! were acquired.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::direct::OutFile;
use super::{Hashing, OutputError, Staged};
use crate::disk::CowDisk;
use crate::disk::cow::CHUNK;
use crate::disk::device::read_exact_at;
use crate::parallel::in_order;
use crate::progress::Progress;
use crate::xz::{
    XzBlock, XzReader, decode_raw, encode_block, index_bytes, layout, stream_footer, stream_header,
};

/// How much of an untouched block is read per step while copying it.
const COPY_STEP: usize = 4 << 20;

/// Most decoded base bytes a [`Pieces`] keeps: the touched blocks of a typical build, 24 MiB
/// each, with room to spare under the memory a cluster build may use.
const DECODED_BUDGET: usize = 192 << 20;

/// Most compressed bytes of pieces a [`Pieces`] keeps.
const PIECES_BUDGET: usize = 256 << 20;

/// What [`write_patched`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Patched {
    /// Final path.
    pub path: PathBuf,
    /// Length of the `.xz` file written.
    pub bytes: u64,
    /// SHA-256 of the file written, hex (what `sha256sum OUT` prints).
    pub sha256: String,
    /// Length of the raw image inside.
    pub raw_bytes: u64,
    /// Blocks in the base.
    pub base_blocks: usize,
    /// Blocks in the output: the base's untouched ones, and what the touched ones became.
    pub blocks: usize,
    /// Base blocks rewritten because their bytes changed.
    pub reencoded: usize,
    /// Compressed bytes copied verbatim from the base: whole blocks, and chunks kept at the start
    /// of rewritten ones.
    pub copied_bytes: u64,
    /// Decoded bytes compressed again by this write.
    pub compressed_again: u64,
    /// Decoded bytes that would have been compressed again, but whose compressed pieces an
    /// earlier write sharing the [`Pieces`] had made.
    pub reused: u64,
    /// Rewritten blocks whose chunks could not be read (another filter chain), so none was kept.
    pub whole: usize,
}

/// Compressed pieces and decoded blocks of one base, kept for the next build of the same base
/// (see the module documentation). Only ever share one between writes of the same base file.
#[derive(Default)]
pub struct Pieces {
    encoded: Mutex<Budgeted<PieceKey, Arc<Encoded>>>,
    decoded: Mutex<Budgeted<usize, Arc<Vec<u8>>>>,
}

impl std::fmt::Debug for Pieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pieces")
            .field("encoded_bytes", &self.encoded.lock().map_or(0, |b| b.bytes))
            .field("decoded_bytes", &self.decoded.lock().map_or(0, |b| b.bytes))
            .finish()
    }
}

/// An unchanged piece: base block, its range in the block, and whether it is stored.
type PieceKey = (usize, usize, usize, bool);

/// Entries that become available once made, and stop being kept past a byte budget.
struct Budgeted<K, V> {
    map: HashMap<K, Arc<OnceLock<V>>>,
    bytes: usize,
}

impl<K, V> Default for Budgeted<K, V> {
    fn default() -> Self {
        Budgeted {
            map: HashMap::new(),
            bytes: 0,
        }
    }
}

/// `key`'s value from `cache`, else made by `make` (outside the lock, so other keys are not held
/// up) and kept while the budget allows. Two writers making one key at once both make it, with
/// the same result.
fn kept_or_made<K, V, E>(
    cache: Option<&Mutex<Budgeted<K, V>>>,
    key: K,
    budget: usize,
    size: impl Fn(&V) -> usize,
    make: impl FnOnce() -> Result<V, E>,
) -> Result<(V, bool), E>
where
    K: std::hash::Hash + Eq,
    V: Clone,
{
    let Some(cache) = cache else {
        return make().map(|v| (v, false));
    };
    let lock = || cache.lock().unwrap_or_else(|p| p.into_inner());
    let cell = Arc::clone(lock().map.entry(key).or_default());
    if let Some(v) = cell.get() {
        return Ok((v.clone(), true));
    }
    let v = make()?;
    let mut held = lock();
    if held.bytes + size(&v) <= budget && cell.set(v.clone()).is_ok() {
        held.bytes += size(&v);
    }
    Ok((v, false))
}

/// One compressed block: header to check.
struct Encoded {
    bytes: Vec<u8>,
    /// Its size without padding, for the index.
    unpadded: u64,
}

/// A block written in place of part of a base block.
struct NewBlock {
    block: Arc<Encoded>,
    /// Decoded bytes it holds.
    len: u64,
}

/// A touched block after its edited bytes were compared with the base.
enum Rebuilt {
    /// The bytes came out the same as the base's: copy the base block.
    Same,
    /// What replaces it, in order.
    New(NewBlocks),
}

/// The blocks replacing one base block, and what making them cost.
struct NewBlocks {
    blocks: Vec<NewBlock>,
    /// Compressed bytes of base chunks kept.
    kept: u64,
    /// Decoded bytes compressed again.
    compressed: u64,
    /// Decoded bytes whose pieces were reused.
    reused: u64,
    /// Whether the base block's chunks could not be read.
    whole: bool,
}

/// Write `disk`, whose base is `base`, to `dest` as `.xz`, compressing again only what changed
/// (see the module documentation). `threads` workers compress; `pieces`, when given, holds what
/// earlier writes of this base compressed and decoded, and keeps what this one does. Memory
/// stays at about `threads + 1` decoded blocks, plus each worker's encoder (at most about
/// 12 MiB for a 1 MiB piece) and what `pieces` keeps.
pub fn write_patched(
    base: &XzReader,
    disk: &CowDisk,
    dest: &Path,
    threads: usize,
    pieces: Option<&Pieces>,
    progress: &dyn Progress,
) -> Result<Patched, OutputError> {
    let staged = Staged::new(dest)?;
    let index = base.index();
    let blocks = index.blocks();
    if disk.len() != index.uncompressed_len() {
        return Err(staged.read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the edited disk is not layered on this .xz base (their sizes differ)",
        )));
    }
    let touched = touched_blocks(blocks, &disk.changed_chunks(), disk.len());
    // Reads are over: what the edits cached is only in the way of the encoders now.
    base.release_cache();
    let mut out = Out {
        sink: Hashing::new(staged.sequential()?),
        file: base.file(),
        blocks,
        records: Vec::with_capacity(blocks.len()),
        next: 0,
        reencoded: 0,
        copied_bytes: 0,
        compressed_again: 0,
        reused: 0,
        whole: 0,
        progress,
        buf: Vec::new(),
    };
    progress.begin("writing .xz (changed blocks only)", Some(disk.len()));
    out.sink
        .write_all(&stream_header(index.check()))
        .map_err(|e| staged.write_err(e))?;
    // Touched blocks are rebuilt a couple at a time, each compressing its pieces on every core:
    // one block rarely has enough work for them all.
    let outer = threads.clamp(1, 2);
    in_order(
        touched.len(),
        outer,
        |k| rebuild(base, disk, touched[k], pieces, threads, &staged),
        |k, rebuilt| {
            out.copy_until(touched[k], &staged)?;
            match rebuilt {
                Rebuilt::Same => out.copy_until(touched[k] + 1, &staged),
                Rebuilt::New(new) => out.put(new, &staged),
            }
        },
    )?;
    out.copy_until(blocks.len(), &staged)?;
    let index_raw = index_bytes(&out.records);
    let footer = stream_footer(index.check(), index_raw.len() as u64).ok_or_else(|| {
        OutputError::Encoder {
            format: "xz",
            path: dest.to_path_buf(),
            detail: "the index is too large for an xz stream footer".into(),
        }
    })?;
    out.sink
        .write_all(&index_raw)
        .and_then(|()| out.sink.write_all(&footer))
        .map_err(|e| staged.write_err(e))?;
    progress.end();
    let written = out.records.len();
    let (reencoded, copied_bytes, reused) = (out.reencoded, out.copied_bytes, out.reused);
    let (compressed_again, whole) = (out.compressed_again, out.whole);
    let (buffered, bytes, sha256) = out.sink.finish();
    let file = buffered.finish().map_err(|e| staged.write_err(e))?;
    staged.finish(file)?;
    Ok(Patched {
        path: dest.to_path_buf(),
        bytes,
        sha256,
        raw_bytes: disk.len(),
        base_blocks: blocks.len(),
        blocks: written,
        reencoded,
        copied_bytes,
        compressed_again,
        reused,
        whole,
    })
}

/// Positions of the blocks that any of `chunks` (sorted chunk numbers) overlaps, ascending.
fn touched_blocks(blocks: &[XzBlock], chunks: &[u64], len: u64) -> Vec<usize> {
    let mut touched: Vec<usize> = Vec::new();
    for &c in chunks {
        let start = c.saturating_mul(CHUNK as u64);
        if start >= len {
            continue;
        }
        let end = start.saturating_add(CHUNK as u64).min(len);
        // A chunk straddling a block boundary touches the blocks on both sides.
        let first = blocks.partition_point(|b| b.uncompressed_range().end <= start);
        let last = blocks.partition_point(|b| b.uncompressed_range().end < end);
        let overlapping = blocks.iter().enumerate().take(last + 1).skip(first);
        for (i, b) in overlapping {
            if touched.last() != Some(&i) && b.uncompressed_size > 0 {
                touched.push(i);
            }
        }
    }
    touched
}

/// Block `i` as the edited disk has it: the base block if its bytes did not change, else
/// rebuilt, its pieces compressed on `threads` workers.
fn rebuild(
    base: &XzReader,
    disk: &CowDisk,
    i: usize,
    pieces: Option<&Pieces>,
    threads: usize,
    staged: &Staged,
) -> Result<Rebuilt, OutputError> {
    let block = base.index().blocks()[i];
    let check = base.index().check();
    let raw = base.raw_block(i).map_err(|e| staged.read_err(e.into()))?;
    // Decoded afresh, not from the reader's cache, so the base block's integrity check is
    // verified by this write or the earlier one that kept it in `pieces`.
    let (decoded, _) = kept_or_made(
        pieces.map(|p| &p.decoded),
        i,
        DECODED_BUDGET,
        |d| d.len(),
        || base.decode_stored(i, &raw).map(Arc::new),
    )
    .map_err(|e| staged.read_err(e.into()))?;
    let mut edited = decoded.to_vec();
    drop(decoded);
    let changed = disk
        .overlay(block.uncompressed_offset, &mut edited)
        .map_err(|e| staged.read_err(e))?;
    if changed.is_empty() {
        return Ok(Rebuilt::Same);
    }
    let encoder_err = |detail| OutputError::Encoder {
        format: "xz",
        path: staged.dest().to_path_buf(),
        detail,
    };
    // A block the base could not compress (random data, already-compressed files) is stored
    // when its chunks cannot tell which parts.
    let store = block.total_size.saturating_mul(100) >= block.uncompressed_size.saturating_mul(99);
    let l = layout(&raw, check, &edited, &changed, store).map_err(encoder_err)?;
    drop(raw);
    let mut new = NewBlocks {
        blocks: Vec::with_capacity(l.pieces.len() + 1),
        kept: 0,
        compressed: 0,
        reused: 0,
        whole: !l.read_chunks,
    };
    if let Some(p) = l.prefix {
        let prefix = Encoded {
            bytes: p.block,
            unpadded: p.unpadded,
        };
        verified(&prefix, &edited[..p.len], i, check).map_err(encoder_err)?;
        new.kept = p.kept;
        new.blocks.push(NewBlock {
            block: Arc::new(prefix),
            len: p.len as u64,
        });
    }
    let encode = |range: &Range<usize>, stored: bool| {
        let data = &edited[range.clone()];
        let (bytes, unpadded) = encode_block(data, check, stored)?;
        let e = Encoded { bytes, unpadded };
        verified(&e, data, i, check)?;
        Ok::<_, String>(Arc::new(e))
    };
    let mut made = Vec::with_capacity(l.pieces.len());
    in_order(
        l.pieces.len(),
        threads,
        |k| {
            let piece = &l.pieces[k];
            if piece.changed {
                return encode(&piece.range, piece.stored).map(|e| (e, false));
            }
            let key = (i, piece.range.start, piece.range.end, piece.stored);
            kept_or_made(
                pieces.map(|p| &p.encoded),
                key,
                PIECES_BUDGET,
                |e| e.bytes.len(),
                || encode(&piece.range, piece.stored),
            )
        },
        |k, (e, reused)| {
            made.push((k, e, reused));
            Ok(())
        },
    )
    .map_err(encoder_err)?;
    for (k, block, reused) in made {
        let piece = &l.pieces[k];
        let len = piece.range.len() as u64;
        match (piece.stored, reused) {
            (true, _) => {}
            (false, true) => new.reused += len,
            (false, false) => new.compressed += len,
        }
        new.blocks.push(NewBlock { block, len });
    }
    Ok(Rebuilt::New(new))
}

/// `e` if it decodes to `data`: a new block is never written on reasoning alone.
fn verified(e: &Encoded, data: &[u8], i: usize, check: u8) -> Result<(), String> {
    let b = XzBlock {
        file_offset: 0,
        total_size: e.bytes.len() as u64,
        unpadded_size: e.unpadded,
        uncompressed_offset: 0,
        uncompressed_size: data.len() as u64,
    };
    match decode_raw(&e.bytes, &b, i, check) {
        Ok(d) if d == data => Ok(()),
        _ => Err(format!(
            "a rebuilt part of block {i} did not decode back to the edited bytes"
        )),
    }
}

/// The output stream as it is written, block by block in order.
struct Out<'a> {
    sink: Hashing<OutFile>,
    file: &'a File,
    blocks: &'a [XzBlock],
    /// (unpadded, uncompressed) size of every block written, for the index.
    records: Vec<(u64, u64)>,
    /// The next base block to write.
    next: usize,
    reencoded: usize,
    copied_bytes: u64,
    compressed_again: u64,
    reused: u64,
    whole: usize,
    progress: &'a dyn Progress,
    buf: Vec<u8>,
}

impl Out<'_> {
    /// Copy base blocks verbatim up to (not including) block `end`.
    fn copy_until(&mut self, end: usize, staged: &Staged) -> Result<(), OutputError> {
        while self.next < end {
            let b = self.blocks[self.next];
            if self.buf.is_empty() {
                self.buf = vec![0u8; COPY_STEP];
            }
            let mut done = 0u64;
            while done < b.total_size {
                let n = (b.total_size - done).min(COPY_STEP as u64) as usize;
                read_exact_at(self.file, b.file_offset + done, &mut self.buf[..n])
                    .map_err(|e| staged.read_err(e))?;
                self.sink
                    .write_all(&self.buf[..n])
                    .map_err(|e| staged.write_err(e))?;
                done += n as u64;
            }
            self.copied_bytes += b.total_size;
            self.records.push((b.unpadded_size, b.uncompressed_size));
            self.finished_block();
        }
        Ok(())
    }

    /// Write what replaces the next base block.
    fn put(&mut self, new: NewBlocks, staged: &Staged) -> Result<(), OutputError> {
        for b in &new.blocks {
            self.sink
                .write_all(&b.block.bytes)
                .map_err(|e| staged.write_err(e))?;
            self.records.push((b.block.unpadded, b.len));
        }
        self.reencoded += 1;
        self.copied_bytes += new.kept;
        self.compressed_again += new.compressed;
        self.reused += new.reused;
        self.whole += usize::from(new.whole);
        self.finished_block();
        Ok(())
    }

    fn finished_block(&mut self) {
        self.progress
            .set(self.blocks[self.next].uncompressed_range().end);
        self.next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(sizes: &[u64]) -> Vec<XzBlock> {
        let mut at = 0;
        sizes
            .iter()
            .map(|&s| {
                let b = XzBlock {
                    file_offset: 0,
                    total_size: 0,
                    unpadded_size: 0,
                    uncompressed_offset: at,
                    uncompressed_size: s,
                };
                at += s;
                b
            })
            .collect()
    }

    #[test]
    fn chunks_map_to_the_blocks_they_overlap() {
        let c = CHUNK as u64;
        // Boundaries on chunk edges, as xz --block-size makes them, and off them.
        let aligned = blocks(&[4 * c, 4 * c, 2 * c + 100]);
        let len = 10 * c + 100;
        assert_eq!(touched_blocks(&aligned, &[], len), Vec::<usize>::new());
        assert_eq!(touched_blocks(&aligned, &[3], len), vec![0]);
        assert_eq!(touched_blocks(&aligned, &[3, 4], len), vec![0, 1]);
        assert_eq!(touched_blocks(&aligned, &[0, 1, 2], len), vec![0]);
        assert_eq!(
            touched_blocks(&aligned, &[10], len),
            vec![2],
            "the partial last chunk"
        );
        assert_eq!(
            touched_blocks(&aligned, &[11, 99], len),
            Vec::<usize>::new()
        );
        let odd = blocks(&[c + 10, 10, 5 * c]);
        assert_eq!(
            touched_blocks(&odd, &[1], 6 * c + 20),
            vec![0, 1, 2],
            "one chunk, three blocks"
        );
        assert_eq!(touched_blocks(&odd, &[0], 6 * c + 20), vec![0]);
        let with_empty = blocks(&[c, 0, c]);
        assert_eq!(touched_blocks(&with_empty, &[0, 1], 2 * c), vec![0, 2]);
    }
}
