//! Where the journal's log lies, so that what it copied of this build's writes can be cleared.
//!
//! The driver journals every block it writes (file contents included) at the start of the log,
//! then checkpoints at once and marks the journal clean. The log keeps those copies after the
//! transaction is done: the last password hash written, the previous build's Wi-Fi key. Once the
//! journal is clean nothing in its log is ever replayed, so the scrub may zero it.

use std::ops::Range;

use super::{Ext4, ext4_err};
use crate::fs::FsError;

impl Ext4 {
    /// Byte ranges, within the partition, of the journal's log (every journal block but its
    /// superblock), merged and ascending; `None` when there is no internal journal or it is not
    /// clean (a log that may still be replayed is never cleared).
    pub fn idle_journal_log(&self) -> Result<Option<Vec<Range<u64>>>, FsError> {
        let fs = self.mount_ro()?;
        let err = |e| ext4_err("read journal", "/", e);
        let Some(jsb) = fs_ext4::jbd2::read_superblock(&fs).map_err(err)? else {
            return Ok(None);
        };
        let needs_recovery = fs.sb.feature_incompat & super::features::INCOMPAT_RECOVER != 0;
        if jsb.start != 0 || needs_recovery {
            return Ok(None);
        }
        let raw = fs.read_inode_raw(fs.sb.journal_inode).map_err(err)?;
        let inode = fs_ext4::inode::Inode::parse(&raw).map_err(err)?;
        if inode.flags & fs_ext4::inode::InodeFlags::EXTENTS.bits() == 0 {
            // An ext3-style journal: pibake never writes such a filesystem.
            return Ok(None);
        }
        let bs = u64::from(fs.sb.block_size());
        let extents =
            fs_ext4::extent::collect_all(&inode.block, fs.dev.as_ref(), fs.sb.block_size())
                .map_err(err)?;
        let mut log = Vec::new();
        for e in extents.iter().filter(|e| !e.uninitialized) {
            let (mut logical, mut physical) = (u64::from(e.logical_block), e.physical_block);
            let mut len = u64::from(e.length);
            // Journal block 0 is the journal's superblock: kept.
            if logical == 0 && len > 0 {
                (logical, physical, len) = (1, physical + 1, len - 1);
            }
            let end = physical.saturating_add(len);
            if logical >= u64::from(jsb.max_len) || end > fs.sb.blocks_count {
                // A map that leaves the filesystem is not one to write zeros through.
                return Ok(None);
            }
            if len > 0 {
                log.push(physical * bs..end * bs);
            }
        }
        Ok(Some(crate::fs::ranges::normalize(log)))
    }
}
