//! Copy-on-write layer: every write lands in a map of changed chunks above a read-only base.
//!
//! The base device is never written. The output stage walks [`CowDisk::changed_chunks`] to combine
//! the base with what changed, so work is proportional to the edit, not to the image.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::device::{BlockDev, check_bounds};

/// Granularity of the layer: one ext4 block, eight sectors.
pub const CHUNK: usize = 4096;

type Chunk = Box<[u8; CHUNK]>;

#[derive(Default)]
struct State {
    chunks: BTreeMap<u64, Chunk>,
    /// One map per open transaction, innermost last: each touched chunk's state before the
    /// transaction began, `None` if it was clean.
    undo: Vec<HashMap<u64, Option<Chunk>>>,
}

/// A writable view of a read-only base device.
pub struct CowDisk {
    base: RwLock<Arc<dyn BlockDev>>,
    len: u64,
    state: Mutex<State>,
}

impl CowDisk {
    /// Wrap `base`; nothing is copied until something is written.
    pub fn new(base: Arc<dyn BlockDev>) -> Self {
        Self {
            len: base.len(),
            base: RwLock::new(base),
            state: Mutex::new(State::default()),
        }
    }

    /// Size in bytes, equal to the base's: the layer never grows the disk.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty base.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device underneath, unchanged by anything written here.
    pub fn base(&self) -> Arc<dyn BlockDev> {
        self.base.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read the base from `other` from now on: a device holding exactly the same bytes (the
    /// decoded copy of an `.xz` base, say) that is cheaper to read. Refused when the sizes
    /// differ; equal content is the caller's promise.
    pub fn rebase(&self, other: Arc<dyn BlockDev>) -> io::Result<()> {
        if other.len() != self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the new base has {} bytes, the disk {}",
                    other.len(),
                    self.len
                ),
            ));
        }
        *self.base.write().unwrap_or_else(|p| p.into_inner()) = other;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a chunk half-copied (copies happen on owned
        // buffers before insertion), so the data behind a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read `buf.len()` bytes at `offset`, seeing every write made so far.
    ///
    /// Changed chunks are copied under the lock; the base is read after it is released, so
    /// readers in parallel (the output encoders) decode an `.xz` base in parallel too. Reads
    /// racing a write to the same bytes may see either version, as with any file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.len())?;
        let mut from_base: Vec<(usize, usize)> = Vec::new();
        {
            let state = self.lock();
            if state.chunks.is_empty() {
                drop(state);
                return self.base().read_at(offset, buf);
            }
            let mut done = 0usize;
            while done < buf.len() {
                let pos = offset + done as u64;
                let index = pos / CHUNK as u64;
                let within = (pos % CHUNK as u64) as usize;
                match state.chunks.get(&index) {
                    Some(chunk) => {
                        let n = (CHUNK - within).min(buf.len() - done);
                        buf[done..done + n].copy_from_slice(&chunk[within..within + n]);
                        done += n;
                    }
                    None => {
                        // The whole run of clean chunks up to the next changed one, in one read.
                        let next_dirty = state
                            .chunks
                            .range(index + 1..)
                            .next()
                            .map(|(i, _)| i * CHUNK as u64)
                            .unwrap_or(u64::MAX);
                        let n = ((next_dirty - pos) as usize).min(buf.len() - done);
                        from_base.push((done, n));
                        done += n;
                    }
                }
            }
        }
        let base = self.base();
        for (at, n) in from_base {
            base.read_at(offset + at as u64, &mut buf[at..at + n])?;
        }
        Ok(())
    }

    /// Write `data` at `offset` into the layer. Writing past the end of the base is an error.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_bounds(offset, data.len(), self.len())?;
        let mut state = self.lock();
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let index = pos / CHUNK as u64;
            let within = (pos % CHUNK as u64) as usize;
            let n = (CHUNK - within).min(data.len() - done);
            let State { chunks, undo } = &mut *state;
            if let Some(undo) = undo.last_mut() {
                undo.entry(index)
                    .or_insert_with(|| chunks.get(&index).cloned());
            }
            let chunk = match chunks.entry(index) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut fresh: Chunk = Box::new([0u8; CHUNK]);
                    let start = index * CHUNK as u64;
                    let avail = (self.len() - start).min(CHUNK as u64) as usize;
                    self.base().read_at(start, &mut fresh[..avail])?;
                    e.insert(fresh)
                }
            };
            chunk[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Start recording what each write replaces, so [`CowDisk::rollback`] can undo it.
    /// Transactions nest: an inner one commits into the one around it.
    pub fn begin(&self) {
        self.lock().undo.push(HashMap::new());
    }

    /// Keep everything written since the matching [`CowDisk::begin`].
    pub fn commit(&self) {
        let mut state = self.lock();
        if let Some(inner) = state.undo.pop()
            && let Some(outer) = state.undo.last_mut()
        {
            // The outer transaction keeps the oldest state it saw of each chunk.
            for (index, before) in inner {
                outer.entry(index).or_insert(before);
            }
        }
    }

    /// Put every chunk written since the matching [`CowDisk::begin`] back as it was.
    pub fn rollback(&self) {
        let mut state = self.lock();
        if let Some(undo) = state.undo.pop() {
            for (index, before) in undo {
                match before {
                    Some(chunk) => state.chunks.insert(index, chunk),
                    None => state.chunks.remove(&index),
                };
            }
        }
    }

    /// Run `f` as one transaction: kept if it succeeds, every chunk it wrote put back if it fails.
    pub fn transaction<T, E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.begin();
        let result = f();
        match result {
            Ok(_) => self.commit(),
            Err(_) => self.rollback(),
        }
        result
    }

    /// Indices of chunks written since [`CowDisk::begin`], ascending; empty outside a transaction.
    pub fn touched(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .lock()
            .undo
            .last()
            .map(|u| u.keys().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Indices of chunks that differ from (or were written over) the base, ascending.
    pub fn changed_chunks(&self) -> Vec<u64> {
        self.lock().chunks.keys().copied().collect()
    }

    /// Byte ranges covered by changed chunks, merged where they touch, ascending; the last may
    /// end at the disk's end rather than a chunk boundary.
    pub fn changed_ranges(&self) -> Vec<std::ops::Range<u64>> {
        let len = self.len();
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for i in self.changed_chunks() {
            let start = i * CHUNK as u64;
            let end = (start + CHUNK as u64).min(len);
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        }
        out
    }

    /// Lay the changed chunks within `offset..offset + buf.len()` over `buf`, which must hold
    /// the base's bytes there, and return the ranges of `buf` whose bytes really differ from the
    /// base (merged where they touch, ascending). A chunk rewritten with its old bytes adds none.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) -> io::Result<Vec<std::ops::Range<usize>>> {
        check_bounds(offset, buf.len(), self.len())?;
        let end = offset + buf.len() as u64;
        let mut changed: Vec<std::ops::Range<usize>> = Vec::new();
        let state = self.lock();
        for (&i, chunk) in state.chunks.range(offset / CHUNK as u64..) {
            let start = i * CHUNK as u64;
            if start >= end {
                break;
            }
            let (lo, hi) = (start.max(offset), (start + CHUNK as u64).min(end));
            let src = &chunk[(lo - start) as usize..(hi - start) as usize];
            let at = (lo - offset) as usize;
            let dst = &mut buf[at..(hi - offset) as usize];
            let differs = |(a, b): (&u8, &u8)| a != b;
            let Some(first) = src.iter().zip(dst.iter()).position(differs) else {
                continue;
            };
            let last = src
                .iter()
                .zip(dst.iter())
                .rposition(differs)
                .unwrap_or(first);
            dst.copy_from_slice(src);
            let r = at + first..at + last + 1;
            match changed.last_mut() {
                Some(prev) if prev.end == r.start => prev.end = r.end,
                _ => changed.push(r),
            }
        }
        Ok(changed)
    }

    /// SHA-256 over every changed chunk's index and content: equal digests over the same base
    /// mean byte-identical disks.
    pub fn changes_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let state = self.lock();
        let mut h = Sha256::new();
        h.update(self.len().to_le_bytes());
        for (i, chunk) in &state.chunks {
            h.update(i.to_le_bytes());
            h.update(&chunk[..]);
        }
        hex::encode(h.finalize())
    }

    /// Bytes held by the layer.
    pub fn changed_bytes(&self) -> u64 {
        self.lock().chunks.len() as u64 * CHUNK as u64
    }
}

/// The layer is itself a device: readers of on-disk structures see the edited disk through it.
impl BlockDev for CowDisk {
    fn len(&self) -> u64 {
        CowDisk::len(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        CowDisk::read_at(self, offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::device::MemDev;

    fn disk(len: usize) -> (CowDisk, Vec<u8>) {
        let base: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        (CowDisk::new(Arc::new(MemDev(base.clone()))), base)
    }

    #[test]
    fn writes_are_seen_and_base_is_untouched() {
        let (cow, mut model) = disk(5 * CHUNK + 100);
        let data = vec![0xAB; CHUNK + 10];
        cow.write_at(CHUNK as u64 - 5, &data).unwrap();
        model[CHUNK - 5..2 * CHUNK + 5].copy_from_slice(&data);
        let mut back = vec![0; model.len()];
        cow.read_at(0, &mut back).unwrap();
        assert_eq!(back, model);
        assert_eq!(cow.changed_chunks(), vec![0, 1, 2]);
        let mut base = vec![0; model.len()];
        cow.base().read_at(0, &mut base).unwrap();
        assert_ne!(base, model, "the base must not have been written");
    }

    #[test]
    fn a_partial_last_chunk_is_writable_and_the_end_is_a_wall() {
        let (cow, _) = disk(2 * CHUNK + 100);
        cow.write_at(2 * CHUNK as u64 + 90, &[1; 10]).unwrap();
        assert!(cow.write_at(2 * CHUNK as u64 + 91, &[1; 10]).is_err());
        let mut b = [0; 10];
        cow.read_at(2 * CHUNK as u64 + 90, &mut b).unwrap();
        assert_eq!(b, [1; 10]);
    }

    #[test]
    fn rollback_restores_exactly_the_state_at_begin() {
        let (cow, model) = disk(4 * CHUNK);
        cow.write_at(10, &[9; 20]).unwrap();
        let mut before = vec![0; model.len()];
        cow.read_at(0, &mut before).unwrap();
        cow.begin();
        cow.write_at(0, &[1; 3 * CHUNK]).unwrap();
        cow.rollback();
        let mut after = vec![0; model.len()];
        cow.read_at(0, &mut after).unwrap();
        assert_eq!(before, after);
        assert_eq!(cow.changed_chunks(), vec![0]);
    }

    #[test]
    fn nested_transactions_commit_inward_and_roll_back_outward() {
        let (cow, model) = disk(4 * CHUNK);
        cow.begin();
        cow.write_at(0, &[1; 10]).unwrap();
        cow.begin();
        cow.write_at(0, &[2; 10]).unwrap();
        cow.write_at(2 * CHUNK as u64, &[3; 10]).unwrap();
        cow.commit();
        cow.begin();
        cow.write_at(CHUNK as u64, &[4; 10]).unwrap();
        cow.rollback();
        let mut b = [0u8; 10];
        cow.read_at(0, &mut b).unwrap();
        assert_eq!(b, [2; 10]);
        assert_eq!(cow.changed_chunks(), vec![0, 2]);
        cow.rollback();
        let mut all = vec![0; model.len()];
        cow.read_at(0, &mut all).unwrap();
        assert_eq!(all, model);
        assert!(cow.changed_chunks().is_empty());
    }

    #[test]
    fn overlay_reports_only_bytes_that_differ() {
        let (d, base) = disk(5 * CHUNK + 100);
        let c = CHUNK as u64;
        // Same bytes written back: a changed chunk, but no change.
        d.write_at(c, &base[CHUNK..CHUNK + 10]).unwrap();
        // Two bytes apart inside one chunk, then a run across a chunk edge.
        d.write_at(2 * c + 5, &[!base[2 * CHUNK + 5]]).unwrap();
        d.write_at(2 * c + 9, &[!base[2 * CHUNK + 9]]).unwrap();
        let run: Vec<u8> = base[4 * CHUNK - 3..4 * CHUNK + 3]
            .iter()
            .map(|b| !b)
            .collect();
        d.write_at(4 * c - 3, &run).unwrap();
        // The partial last chunk.
        d.write_at(5 * c + 99, &[!base[5 * CHUNK + 99]]).unwrap();

        let mut whole = base.clone();
        let changed = d.overlay(0, &mut whole).unwrap();
        let mut expect = vec![0u8; whole.len()];
        d.read_at(0, &mut expect).unwrap();
        assert_eq!(whole, expect);
        let ranges = [
            2 * CHUNK + 5..2 * CHUNK + 10,
            4 * CHUNK - 3..4 * CHUNK + 3,
            5 * CHUNK + 99..5 * CHUNK + 100,
        ];
        assert_eq!(changed, ranges.to_vec());

        // A window starting mid-chunk sees offsets relative to itself.
        let (off, len) = (2 * CHUNK + 7, 2 * CHUNK);
        let mut part = base[off..off + len].to_vec();
        let changed = d.overlay(off as u64, &mut part).unwrap();
        assert_eq!(part, expect[off..off + len]);
        assert_eq!(
            changed,
            vec![2..3, 4 * CHUNK - 3 - off..4 * CHUNK + 3 - off]
        );
    }

    #[test]
    fn changed_ranges_merge_neighbours_and_the_digest_follows_content() {
        let (cow, _) = disk(6 * CHUNK + 100);
        cow.write_at(CHUNK as u64 + 1, &[1; 10]).unwrap();
        cow.write_at(2 * CHUNK as u64, &[2; 10]).unwrap();
        cow.write_at(6 * CHUNK as u64 + 50, &[3; 10]).unwrap();
        let len = 6 * CHUNK as u64 + 100;
        assert_eq!(
            cow.changed_ranges(),
            vec![CHUNK as u64..3 * CHUNK as u64, 6 * CHUNK as u64..len]
        );
        let (other, _) = disk(6 * CHUNK + 100);
        other.write_at(2 * CHUNK as u64, &[2; 10]).unwrap();
        other.write_at(CHUNK as u64 + 1, &[1; 10]).unwrap();
        other.write_at(6 * CHUNK as u64 + 50, &[3; 10]).unwrap();
        assert_eq!(cow.changes_digest(), other.changes_digest());
        other.write_at(6 * CHUNK as u64 + 50, &[4; 1]).unwrap();
        assert_ne!(cow.changes_digest(), other.changes_digest());
    }
}
