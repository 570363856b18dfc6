//! `.img.xz` from an `.img.xz` base: only what an edit touched is compressed again.
//!
//! Raspberry Pi OS ships its images as independent 24 MiB xz blocks, and a build changes a few
//! MiB of them. Recompressing the whole image at preset 6 takes minutes; here every base block
//! that no changed chunk of the [`CowDisk`] overlaps is copied byte for byte (header, data,
//! padding and check). The others are decoded, the edits laid over them, and, where their bytes
//! really changed, rebuilt by the `splice` module: the block's LZMA2 chunks that the edit left
//! valid are kept, the stretches the base stored uncompressed are stored again, and only the
//! rest is compressed again at preset 6. A block that cannot be spliced (another filter chain,
//! say) is compressed whole. Every rebuilt block is decoded and compared with the edited bytes
//! before it is written. The output is one stream with the base's block boundaries and check
//! type, so it stays randomly accessible, and it depends only on the base and the edits: the
//! same inputs give the same bytes whatever the thread count.
//!
//! Corrupt data in the base: a block an edit touches is decoded and checked, so damage there
//! stops the write with [`crate::xz::XzError::CorruptBlock`] and nothing is left at the
//! destination. An untouched block is copied without being decoded: checking it would cost as
//! much as decoding the whole image, which is what this module exists to avoid. Its damage is
//! then carried over unchanged, together with the block's original integrity check, so it stays
//! exactly as detectable as in the base (`xz -t`, or any decoder, rejects it); it is never
//! re-wrapped under a fresh, matching check. Bases are expected to have been verified when they
//! were acquired.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{Hashing, OutputError, Staged};
use crate::disk::CowDisk;
use crate::disk::cow::CHUNK;
use crate::disk::device::read_exact_at;
use crate::parallel::in_order;
use crate::progress::Progress;
use crate::xz::{
    XzBlock, XzReader, decode_raw, encode_block, index_bytes, splice, stream_footer, stream_header,
};

/// How much of an untouched block is read per step while copying it.
const COPY_STEP: usize = 4 << 20;

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
    /// Blocks in the output (always as many as in the base).
    pub blocks: usize,
    /// Blocks compressed again because their bytes changed.
    pub reencoded: usize,
    /// Compressed bytes copied verbatim from the base: whole blocks, and chunks kept inside
    /// rebuilt ones.
    pub copied_bytes: u64,
    /// Decoded bytes compressed again (the rest of each rebuilt block was kept or stored).
    pub compressed_again: u64,
    /// Rebuilt blocks that had to be compressed whole, because they could not be spliced.
    pub whole: usize,
}

/// A touched block after its edited bytes were compared with the base.
enum Rebuilt {
    /// The bytes came out the same as the base's: copy the base block.
    Same,
    /// A rebuilt block.
    New(NewBlock),
}

/// A block written in place of a base block.
struct NewBlock {
    /// Header to check.
    bytes: Vec<u8>,
    /// Its size without padding, for the index.
    unpadded: u64,
    /// Compressed bytes of base chunks it kept.
    kept: u64,
    /// Decoded bytes compressed again for it.
    compressed: u64,
    /// Whether it was compressed whole rather than spliced.
    whole: bool,
}

/// Write `disk`, whose base is `base`, to `dest` as `.xz`, compressing again only the blocks that
/// changed (see the module documentation). `threads` workers compress; memory stays at about
/// `threads + 1` blocks, plus each worker's encoder (about 100 MiB at preset 6).
pub fn write_patched(
    base: &XzReader,
    disk: &CowDisk,
    dest: &Path,
    threads: usize,
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
        sink: Hashing::new(BufWriter::with_capacity(1 << 20, staged.file()?)),
        file: base.file(),
        blocks,
        records: Vec::with_capacity(blocks.len()),
        next: 0,
        reencoded: 0,
        copied_bytes: 0,
        compressed_again: 0,
        whole: 0,
        progress,
        buf: Vec::new(),
    };
    progress.begin("writing .xz (changed blocks only)", Some(disk.len()));
    out.sink
        .write_all(&stream_header(index.check()))
        .map_err(|e| staged.write_err(e))?;
    in_order(
        touched.len(),
        threads,
        |k| rebuild(base, disk, touched[k], &staged),
        |k, rebuilt| {
            out.copy_until(touched[k], &staged)?;
            match rebuilt {
                Rebuilt::Same => out.copy_until(touched[k] + 1, &staged),
                Rebuilt::New(block) => out.put(&block, &staged),
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
    let (reencoded, copied_bytes) = (out.reencoded, out.copied_bytes);
    let (compressed_again, whole) = (out.compressed_again, out.whole);
    let (buffered, bytes, sha256) = out.sink.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| staged.write_err(e.into_error()))?;
    staged.finish(file)?;
    Ok(Patched {
        path: dest.to_path_buf(),
        bytes,
        sha256,
        raw_bytes: disk.len(),
        blocks: blocks.len(),
        reencoded,
        copied_bytes,
        compressed_again,
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
/// rebuilt.
fn rebuild(
    base: &XzReader,
    disk: &CowDisk,
    i: usize,
    staged: &Staged,
) -> Result<Rebuilt, OutputError> {
    let block = base.index().blocks()[i];
    let check = base.index().check();
    let raw = base.raw_block(i).map_err(|e| staged.read_err(e.into()))?;
    // Decoded afresh, not from the cache, so the base block's integrity check is verified now.
    let mut edited = base
        .decode_stored(i, &raw)
        .map_err(|e| staged.read_err(e.into()))?;
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
    let spliced = splice(&raw, check, &edited, &changed).map_err(encoder_err)?;
    drop(raw);
    if let Some(s) = spliced {
        // Splicing rests on reasoning about decoder state; a block that does not decode back to
        // the edited bytes is never written, whatever the reason.
        let rebuilt = XzBlock {
            total_size: s.block.len() as u64,
            unpadded_size: s.unpadded,
            ..block
        };
        if decode_raw(&s.block, &rebuilt, i, check).is_ok_and(|d| d == edited) {
            return Ok(Rebuilt::New(NewBlock {
                bytes: s.block,
                unpadded: s.unpadded,
                kept: s.kept,
                compressed: s.encoded,
                whole: false,
            }));
        }
    }
    // A block the base could not compress (random data, already-compressed files) is stored:
    // LZMA would spend seconds per MiB finding nothing, for the same size.
    let store = block.total_size.saturating_mul(100) >= block.uncompressed_size.saturating_mul(99);
    let (bytes, unpadded) = encode_block(&edited, check, store).map_err(encoder_err)?;
    Ok(Rebuilt::New(NewBlock {
        bytes,
        unpadded,
        kept: 0,
        compressed: if store { 0 } else { edited.len() as u64 },
        whole: true,
    }))
}

/// The output stream as it is written, block by block in order.
struct Out<'a> {
    sink: Hashing<BufWriter<File>>,
    file: &'a File,
    blocks: &'a [XzBlock],
    /// (unpadded, uncompressed) size of every block written, for the index.
    records: Vec<(u64, u64)>,
    /// The next base block to write.
    next: usize,
    reencoded: usize,
    copied_bytes: u64,
    compressed_again: u64,
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

    /// Write a rebuilt block in place of the next base block.
    fn put(&mut self, block: &NewBlock, staged: &Staged) -> Result<(), OutputError> {
        let b = self.blocks[self.next];
        self.sink
            .write_all(&block.bytes)
            .map_err(|e| staged.write_err(e))?;
        self.records.push((block.unpadded, b.uncompressed_size));
        self.reencoded += 1;
        self.copied_bytes += block.kept;
        self.compressed_again += block.compressed;
        self.whole += usize::from(block.whole);
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
