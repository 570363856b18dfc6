//! Random access into a multi-block `.xz`: the blocks a read touches are decoded (several at
//! once), the last few kept, and small reads remembered page by page; and every block decoded
//! in order on every core, for streaming the whole image out.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::check::check_supported;
use super::decoder::{decode_block, decode_raw, read_stored};
use super::error::{XzError, format_err};
use super::index::{XzBlock, XzIndex};
use super::pread::check_bounds;

/// Decoded blocks an [`XzReader`] keeps by default: enough for filesystem code going back and forth
/// between metadata and data, small (4 × 24 MiB for Raspberry Pi OS) next to the image.
pub const DEFAULT_CACHE_BLOCKS: usize = 4;

/// Largest uncompressed block [`XzReader`] accepts: past it one small read decodes and holds hundreds
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

/// Refuse files where random access would cost more than decoding the whole file once.
fn random_access_ok(index: &XzIndex, max_block: u64) -> Result<(), XzError> {
    if !check_supported(index.check()) {
        return Err(format_err(
            7,
            format!(
                "its integrity check (ID {}) is one this build cannot verify",
                index.check()
            ),
        ));
    }
    let reason = match index.blocks().len() {
        0 => Some("it holds no data".to_string()),
        1 => Some(
            "a single xz block: xz compressed it single-threaded without --block-size, so every \
             read would decode the whole image"
                .to_string(),
        ),
        _ => index
            .blocks()
            .iter()
            // Compressed size counts too: it is what a read allocates before decoding.
            .position(|b| b.uncompressed_size.max(b.total_size) > max_block)
            .map(|i| {
                let b = &index.blocks()[i];
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
            if self.order.len() > PAGE_CACHE_BYTES / PAGE
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
        }
    }
}

/// An `.xz` image read at random: the decoded bytes of any range, decoding only the blocks it
/// touches (`disk` makes it a block device).
pub struct XzReader {
    file: File,
    index: XzIndex,
    cache: Mutex<Lru>,
    pages: Mutex<Pages>,
    decoded: AtomicU64,
    threads: usize,
}

impl XzReader {
    /// Open `path` and read its index, keeping up to `cache_blocks` decoded blocks (0 keeps none).
    ///
    /// Fails with [`XzError::NotRandomAccess`] for a file of one block or with a block larger
    /// than [`MAX_BLOCK`]; decode such a file whole instead.
    pub fn open(path: &Path, cache_blocks: usize) -> Result<XzReader, XzError> {
        let file = File::open(path)?;
        let index = XzIndex::read(&file)?;
        random_access_ok(&index, MAX_BLOCK)?;
        Ok(XzReader {
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

    /// How many blocks have been decoded so far, by reads, [`XzReader::decode`] and
    /// [`XzReader::for_each_block`] (cache hits do not count).
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

    /// Decode block `i` from `raw`, its stored bytes as [`XzReader::raw_block`] returns them,
    /// verifying its check.
    pub fn decode_stored(&self, i: usize, raw: &[u8]) -> Result<Vec<u8>, XzError> {
        let data = decode_raw(raw, self.index.get(i)?, i, self.index.check())?;
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
        let blocks = &self.index.blocks();
        crate::parallel::in_order(
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

impl XzReader {
    /// Size of the decoded image in bytes.
    pub fn len(&self) -> u64 {
        self.index.uncompressed_len()
    }

    /// Whether the decoded image is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` with the decoded bytes from `offset`, decoding only the blocks it touches.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
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
            .filter(|&i| self.index.blocks()[i].uncompressed_size > 0)
            .collect();
        // A few blocks at a time, so a huge read holds no more than a few decoded blocks.
        for batch in wanted.chunks(self.threads.max(1)) {
            for (i, data) in self.blocks(batch)? {
                let b = &self.index.blocks()[i];
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

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::process::Command;

    #[test]
    fn reads_at_random_match_xz_dc() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expect) = six_blocks(dir.path(), "-T1");
        let dev = XzReader::open(&path, 2).unwrap();
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
        let dev = XzReader::open(&path, 1).unwrap();
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
        let fresh = XzReader::open(&path, 0).unwrap();
        let mut check = [0u8; 10];
        fresh.read_at(3 * bs + 2 * PAGE as u64, &mut check).unwrap();
        assert_eq!(
            page, check,
            "a page from the page cache holds the block's bytes"
        );

        let none = XzReader::open(&path, 0).unwrap();
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
        let dev = XzReader::open(&path, DEFAULT_CACHE_BLOCKS).unwrap();
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
        match XzReader::open(&path, 4) {
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

        let dev = XzReader::open(&path, 2).unwrap();
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
    fn for_each_block_yields_exactly_xz_dc_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expect) = six_blocks(dir.path(), "-T2");
        let dev = XzReader::open(&path, 4).unwrap();
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
}
