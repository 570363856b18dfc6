//! Zeroing what an edit freed.
//!
//! A file pibake replaces or removes gives its blocks (ext4) or clusters (FAT) back with the old
//! bytes still in them: an old password hash, the old `cmdline.txt`. They would ship in the
//! output, readable by anyone with the card; and because a block map leaves free space out,
//! `bmaptool copy` writes zeros there and would not reproduce the image. So once the plan is
//! applied, every byte that is free now and either held data in the base or was written by this
//! build is set to zero. Free space the base already had is left as it came: Raspberry Pi OS
//! zero-fills it before publishing, and reading it all would cost a pass over the image.
//!
//! The ext4 journal is the other place old bytes stay: the driver copies every block it writes
//! into the journal's log before writing it home. Once the journal is clean that log is never
//! read again, so the blocks of it this build wrote are zeroed too; the previous build's copies
//! were zeroed by that build, so a log that started out zero stays zero.

use std::io;
use std::ops::Range;

use crate::disk::cow::CHUNK;
use crate::disk::{CowDisk, FsKind, Image};
use crate::fs::Window;
use crate::fs::ranges::{complement, intersect, normalize};

/// How much is read at a time while looking for bytes to clear.
const STEP: usize = 1 << 20;

/// Zero the bytes the edits so far have freed, in the copy-on-write layer; returns how many
/// bytes were cleared (pieces already zero are not written). Partitions whose filesystem has no
/// free-space map here are left alone.
pub fn zero_freed(image: &Image) -> io::Result<u64> {
    let disk = &image.disk;
    let base = disk.base();
    let changed = disk.changed_ranges();
    let mut zeroed = 0;
    for p in &image.table.partitions {
        let (at, len) = (p.offset(), p.bytes());
        let Some(after) = crate::fs::free_ranges(p.fs, &Window::new(&**disk, at, len))? else {
            continue;
        };
        let Some(before) = crate::fs::free_ranges(p.fs, &Window::new(&*base, at, len))? else {
            continue;
        };
        let written: Vec<Range<u64>> = changed
            .iter()
            .map(|r| r.start.max(at) - at..r.end.min(at + len).saturating_sub(at))
            .filter(|r| r.start < r.end)
            .collect();
        let mut held = complement(normalize(before), len);
        held.extend(written.iter().cloned());
        let mut clear = intersect(&normalize(after), &normalize(held));
        if p.fs == FsKind::Ext4 {
            clear.extend(intersect(&journal_log(image, p)?, &written));
        }
        for r in normalize(clear) {
            zeroed += zero(disk, at + r.start..at + r.end)?;
        }
    }
    Ok(zeroed)
}

/// The idle journal log of the ext4 in `p`, or nothing when there is none to clear (no journal,
/// one that may still be replayed, or one whose map cannot be read: the build is not refused
/// for what only this tidying needs).
fn journal_log(image: &Image, p: &crate::disk::Partition) -> io::Result<Vec<Range<u64>>> {
    let region = image.region(p, false)?;
    let log = crate::fs::ext4::Ext4::open(region, 0)
        .and_then(|fs| fs.idle_journal_log())
        .ok()
        .flatten();
    Ok(log.unwrap_or_default())
}

/// Clear `r` on `disk`, writing only the chunk-aligned pieces that hold something.
fn zero(disk: &CowDisk, r: Range<u64>) -> io::Result<u64> {
    let zeros = [0u8; CHUNK];
    let mut buf = vec![0u8; STEP];
    let mut cleared = 0;
    let mut at = r.start;
    while at < r.end {
        let n = ((r.end - at) as usize).min(STEP);
        disk.read_at(at, &mut buf[..n])?;
        let mut i = 0;
        while i < n {
            // Pieces end on chunk boundaries of the disk, so each write dirties one chunk.
            let pos = at + i as u64;
            let end = ((pos / CHUNK as u64 + 1) * CHUNK as u64).min(at + n as u64);
            let piece = &buf[i..(end - at) as usize];
            if piece.iter().any(|&b| b != 0) {
                disk.write_at(pos, &zeros[..piece.len()])?;
                cleared += piece.len() as u64;
            }
            i = (end - at) as usize;
        }
        at += n as u64;
    }
    Ok(cleared)
}
