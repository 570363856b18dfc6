//! The ext4 root partition, through `rust-fs-ext4`.
//!
//! # What is written, and what is refused
//! pibake writes only filesystems whose feature set it has tested end to end (fixtures built like
//! Raspberry Pi OS's `mkfs.ext4 -O ^64bit,^huge_file`, plus trixie's `orphan_file` and
//! `metadata_csum_seed`, plus `64bit` as every other `mkfs.ext4` makes), judged by `e2fsck -fn`
//! and an independent reader after randomised edits. Anything else is refused before a block is
//! touched, because a driver that does not understand a feature can corrupt it silently:
//! - `inline_data`, `encrypt`, `casefold`, `ea_inode`, `large_dir`, `meta_bg`, `mmp`, external
//!   journals, compression: structures the edits would have to maintain and are not tested here;
//! - `bigalloc`, `quota`, `project`, `verity`, `orphan_present`, `shared_blocks`: counters or
//!   trees the driver does not keep up to date (quota usage, cluster maps, an in-use orphan file);
//! - a journal that needs recovery or a superblock that records errors: the image was not shut
//!   down cleanly and replaying it is the kernel's or `e2fsck`'s job, not a build tool's.
//!
//! Reading is allowed on all of them.
//!
//! # One mount per operation
//! Each call mounts the partition, does one thing, and releases the mount, so every operation
//! starts from and ends at a clean, consistent filesystem. A failed mutation drops its mount and
//! the copy-on-write layer puts back every block written since the call began, which also undoes
//! whatever the driver wrote before it noticed the problem.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fs_ext4::Filesystem;
use fs_ext4::runtime::Runtime;

pub mod features;
pub mod free;
mod journal;
mod layout;

use super::path::{components, parent_and_name};
use super::{Entry, FileOps, FsError, Kind, Meta, Stat};
use crate::disk::Region;

const ROOT_INO: u32 = 2;
const MAX_SYMLINK_HOPS: usize = 40;

/// The clock and inode generations given to the driver: fixed, so builds are reproducible.
struct FixedRuntime {
    now: i64,
    generation: AtomicU32,
}

impl Runtime for FixedRuntime {
    fn now_unix_seconds(&self) -> i64 {
        self.now
    }

    fn next_inode_generation(&self) -> u32 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }
}

/// Superblock facts worth showing and checking.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ext4Info {
    /// Volume label.
    pub label: String,
    /// Block size in bytes.
    pub block_size: u32,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks (including those reserved for root).
    pub free_blocks: u64,
    /// Enabled feature names, as `dumpe2fs` spells them where known.
    pub features: Vec<String>,
}

/// The ext4 root partition of an image.
pub struct Ext4 {
    region: Region,
    runtime: Arc<FixedRuntime>,
}

fn ext4_err(op: &'static str, path: &str, e: fs_ext4::Error) -> FsError {
    use fs_ext4::Error as E;
    let p = path.to_string();
    match e {
        E::NotFound => FsError::NotFound(p),
        E::NotADirectory => FsError::NotADirectory(p),
        E::IsADirectory => FsError::IsADirectory(p),
        E::AlreadyExists => FsError::AlreadyExists(p),
        E::DirectoryNotEmpty => FsError::NotEmpty(p),
        // The driver calls running out of inodes "corrupt"; it is a full filesystem.
        E::NoSpaceLeftOnDevice => no_space(p),
        E::Corrupt(why) if why.contains("free inode") => no_space(p),
        other => match damage(&other) {
            Some(detail) => FsError::Damaged {
                op,
                path: p,
                detail,
            },
            None => FsError::Ext4 {
                op,
                path: p,
                detail: format!("{other:?}"),
            },
        },
    }
}

fn no_space(path: String) -> FsError {
    FsError::NoSpace {
        partition: "root",
        path,
        needed: 0,
        free: 0,
    }
}

/// What is wrong with the filesystem, in words, when the driver's error means the image's ext4
/// structures are damaged or truncated (rather than pibake or the machine being at fault).
fn damage(e: &fs_ext4::Error) -> Option<String> {
    use fs_ext4::Error as E;
    Some(match e {
        E::BadMagic { found, expected } => {
            format!("superblock magic is {found:#06x}, not {expected:#06x}")
        }
        E::BadChecksum { what } => format!("the checksum of a {what} does not match"),
        E::CorruptExtentTree(why) => format!("an extent tree is corrupt: {why}"),
        E::CorruptDirEntry(why) => format!("a directory entry is corrupt: {why}"),
        E::Corrupt(why) => (*why).to_string(),
        E::InvalidInode(n) => format!("a reference to inode {n}, which cannot exist"),
        E::InvalidBlock(n) => format!("a reference to block {n}, past the end of the filesystem"),
        E::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("it reaches past the end of its partition ({io})")
        }
        _ => return None,
    })
}

/// Where a path led.
struct Resolved {
    ino: u32,
}

impl Ext4 {
    /// Open the root partition in `region`. A writable region is checked first: an ext4 pibake
    /// cannot write safely is refused here, before anything is written.
    /// `clock` stamps everything pibake creates or changes.
    pub fn open(region: Region, clock: i64) -> Result<Self, FsError> {
        let me = Self {
            region,
            runtime: Arc::new(FixedRuntime {
                now: clock,
                generation: AtomicU32::new(1),
            }),
        };
        let sb = me.superblock()?;
        if me.region.is_writable() {
            if sb.feature_incompat & features::INCOMPAT_RECOVER != 0 {
                return Err(FsError::NeedsRecovery);
            }
            if sb.state & features::STATE_ERRORS != 0 {
                return Err(FsError::HasErrors);
            }
            // The driver writes only extent-mapped files; without the feature the first write
            // would fail half-way through the edits.
            if sb.feature_incompat & features::INCOMPAT_EXTENT == 0 {
                return Err(FsError::NoExtents);
            }
            let bad = features::names(
                sb.feature_compat & !features::COMPAT_OK,
                sb.feature_incompat & !features::INCOMPAT_OK & !features::INCOMPAT_RECOVER,
                sb.feature_ro_compat & !features::RO_COMPAT_OK,
            );
            if !bad.is_empty() {
                return Err(FsError::UnsupportedFeatures(bad.join(", ")));
            }
        }
        // Mount once now so a damaged filesystem is reported at open, not at the first edit.
        me.mount_ro()?;
        Ok(me)
    }

    fn superblock(&self) -> Result<fs_ext4::Superblock, FsError> {
        fs_ext4::Superblock::read(&self.region.read_only())
            .map_err(|e| ext4_err("read superblock", "/", e))
    }

    /// Label, sizes and features from the superblock.
    pub fn info(&self) -> Result<Ext4Info, FsError> {
        let sb = self.superblock()?;
        let features =
            features::all_names(sb.feature_compat, sb.feature_incompat, sb.feature_ro_compat);
        Ok(Ext4Info {
            label: sb.volume_name.clone(),
            block_size: sb.block_size(),
            blocks: sb.blocks_count,
            free_blocks: sb.free_blocks_count,
            features,
        })
    }

    fn mount_ro(&self) -> Result<Filesystem, FsError> {
        Filesystem::mount_with_runtime(Arc::new(self.region.read_only()), self.runtime.clone())
            .map_err(|e| ext4_err("mount", "/", e))
    }

    /// Run one mutation on a fresh writable mount; undo every block it wrote if it fails.
    fn mutate<T>(
        &mut self,
        op: &'static str,
        path: &str,
        f: impl FnOnce(&Filesystem) -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        if !self.region.is_writable() {
            return Err(FsError::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the image was opened read-only",
            )));
        }
        let disk = self.region.disk().clone();
        disk.transaction(|| {
            // The mount is dropped inside the transaction, so whatever its drop writes after a
            // failure is undone too.
            let fs =
                Filesystem::mount_with_runtime(Arc::new(self.region.clone()), self.runtime.clone())
                    .map_err(|e| ext4_err("mount", path, e))?;
            let value = f(&fs)?;
            fs.finish().map_err(|e| ext4_err(op, path, e))?;
            Ok(value)
        })
    }

    /// Follow `path` from the root, resolving symlinks inside the partition (absolute targets
    /// restart at the partition's root, never the host's).
    fn resolve(fs: &Filesystem, path: &str, follow_last: bool) -> Result<Resolved, FsError> {
        let mut pending: std::collections::VecDeque<Vec<u8>> = components(path)?
            .into_iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let mut stack: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut hops = 0;
        while let Some(comp) = pending.pop_front() {
            if comp == b"." {
                continue;
            }
            if comp == b".." {
                stack.pop();
                continue;
            }
            let dir = stack.last().map_or(ROOT_INO, |(ino, _)| *ino);
            let ino = fs
                .lookup_at(dir, &comp)
                .map_err(|e| ext4_err("lookup", path, e))?;
            let inode = fs.stat_ino(ino).map_err(|e| ext4_err("stat", path, e))?;
            let last = pending.is_empty();
            if inode.is_symlink() && (!last || follow_last) {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(FsError::SymlinkLoop(path.to_string()));
                }
                let target = fs
                    .read_link_ino(ino)
                    .map_err(|e| ext4_err("readlink", path, e))?;
                if target.starts_with(b"/") {
                    stack.clear();
                }
                for part in target.split(|&b| b == b'/').rev() {
                    if !part.is_empty() {
                        pending.push_front(part.to_vec());
                    }
                }
                continue;
            }
            if !last && !inode.is_dir() {
                return Err(FsError::NotADirectory(path.to_string()));
            }
            stack.push((ino, comp));
        }
        Ok(Resolved {
            ino: stack.last().map_or(ROOT_INO, |(ino, _)| *ino),
        })
    }

    /// Resolve the directory that holds `path`'s final name.
    fn resolve_parent<'p>(fs: &Filesystem, path: &'p str) -> Result<(Resolved, &'p str), FsError> {
        let (parent, name) = parent_and_name(path)?;
        let parent_path = format!("/{}", parent.join("/"));
        let dir = Self::resolve(fs, &parent_path, true).map_err(|e| match e {
            FsError::NotFound(_) => FsError::NotFound(path.to_string()),
            other => other,
        })?;
        let inode = fs
            .stat_ino(dir.ino)
            .map_err(|e| ext4_err("stat", path, e))?;
        if !inode.is_dir() {
            return Err(FsError::NotADirectory(path.to_string()));
        }
        Ok((dir, name))
    }

    fn lookup(fs: &Filesystem, dir: u32, name: &str) -> Result<Option<u32>, FsError> {
        match fs.lookup_at(dir, name.as_bytes()) {
            Ok(ino) => Ok(Some(ino)),
            Err(fs_ext4::Error::NotFound) => Ok(None),
            Err(e) => Err(ext4_err("lookup", name, e)),
        }
    }

    fn stat_of(fs: &Filesystem, ino: u32, path: &str) -> Result<Stat, FsError> {
        let i = fs.stat_ino(ino).map_err(|e| ext4_err("stat", path, e))?;
        Ok(Stat {
            kind: match u32::from(i.mode) & 0o170000 {
                0o100000 => Kind::File,
                0o040000 => Kind::Dir,
                0o120000 => Kind::Symlink,
                _ => Kind::Other,
            },
            mode: u32::from(i.mode) & 0o7777,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            mtime: i.mtime,
            nlink: u32::from(i.links_count),
        })
    }

    fn apply_meta(fs: &Filesystem, ino: u32, meta: Meta, path: &str) -> Result<(), FsError> {
        let mode = u16::try_from(meta.mode & 0o7777).map_err(|_| FsError::InvalidPath {
            path: path.to_string(),
            reason: "mode does not fit in 12 bits",
        })?;
        fs.apply_chmod_ino(ino, mode)
            .map_err(|e| ext4_err("chmod", path, e))?;
        fs.apply_chown_ino(ino, meta.uid, meta.gid)
            .map_err(|e| ext4_err("chown", path, e))?;
        fs.apply_utimens_ino(ino, meta.mtime, 0, meta.mtime, 0)
            .map_err(|e| ext4_err("utimens", path, e))
    }

    /// Refuse a write that cannot fit, before anything is written. Counts data blocks plus a
    /// margin for extent, directory and journal blocks; root's reserved blocks are usable.
    fn check_space(fs: &Filesystem, path: &str, bytes: u64) -> Result<(), FsError> {
        let bs = u64::from(fs.sb.block_size());
        let needed_blocks = bytes.div_ceil(bs) + 8 + bytes.div_ceil(bs * 340);
        let free = fs.sb.free_blocks_count;
        if needed_blocks > free {
            return Err(FsError::NoSpace {
                partition: "root",
                path: path.to_string(),
                needed: needed_blocks * bs,
                free: free * bs,
            });
        }
        Ok(())
    }

    /// Hand the region back, for the output stage.
    pub fn into_region(self) -> Region {
        self.region
    }
}

impl FileOps for Ext4 {
    fn stat(&mut self, path: &str) -> Result<Stat, FsError> {
        let fs = self.mount_ro()?;
        let r = Self::resolve(&fs, path, false)?;
        Self::stat_of(&fs, r.ino, path)
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, FsError> {
        let fs = self.mount_ro()?;
        let r = Self::resolve(&fs, path, true)?;
        let st = Self::stat_of(&fs, r.ino, path)?;
        match st.kind {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsADirectory(path.to_string())),
            _ => {
                return Err(FsError::Unsupported {
                    op: "reading a device or FIFO",
                    fs: "ext4",
                    path: path.to_string(),
                });
            }
        }
        // The size is the inode's word, and the buffer is allocated by it: only a sparse file
        // (never one pibake reads: configuration, lists, units) is larger than its filesystem.
        let len = usize::try_from(st.size)
            .ok()
            .filter(|&n| n as u64 <= self.region.len())
            .ok_or_else(|| FsError::Unsupported {
                op: "reading a file larger than its filesystem",
                fs: "ext4",
                path: path.to_string(),
            })?;
        // Grown a MiB at a time as the driver delivers bytes, so a size the inode only claims
        // costs nothing.
        let mut buf = Vec::new();
        while buf.len() < len {
            let done = buf.len();
            buf.resize(done + (len - done).min(1 << 20), 0);
            let n = fs
                .read_ino(r.ino, done as u64, &mut buf[done..])
                .map_err(|e| ext4_err("read", path, e))?;
            buf.truncate(done + n);
            if n == 0 {
                break;
            }
        }
        Ok(buf)
    }

    fn read_link(&mut self, path: &str) -> Result<String, FsError> {
        let fs = self.mount_ro()?;
        let r = Self::resolve(&fs, path, false)?;
        let target = fs
            .read_link_ino(r.ino)
            .map_err(|e| ext4_err("readlink", path, e))?;
        Ok(String::from_utf8_lossy(&target).into_owned())
    }

    fn list(&mut self, path: &str) -> Result<Vec<Entry>, FsError> {
        let fs = self.mount_ro()?;
        let r = Self::resolve(&fs, path, true)?;
        if Self::stat_of(&fs, r.ino, path)?.kind != Kind::Dir {
            return Err(FsError::NotADirectory(path.to_string()));
        }
        let mut out = Vec::new();
        for e in fs
            .read_dir_ino(r.ino)
            .map_err(|e| ext4_err("readdir", path, e))?
        {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let stat = Self::stat_of(&fs, e.inode, &name)?;
            out.push(Entry { name, stat });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn write_file(&mut self, path: &str, data: &[u8], meta: Meta) -> Result<(), FsError> {
        self.mutate("write", path, |fs| {
            let (dir, name) = Self::resolve_parent(fs, path)?;
            let existing = match Self::lookup(fs, dir.ino, name)? {
                // An existing symlink is written through, as `cp` would.
                Some(_) => Some(Self::resolve(fs, path, true)?),
                None => None,
            };
            let ino = match existing {
                Some(target) => {
                    match Self::stat_of(fs, target.ino, path)?.kind {
                        Kind::File => {}
                        Kind::Dir => return Err(FsError::IsADirectory(path.to_string())),
                        _ => return Err(FsError::AlreadyExists(path.to_string())),
                    }
                    let old = fs
                        .stat_ino(target.ino)
                        .map_err(|e| ext4_err("stat", path, e))?;
                    let old_blocks = old.size.div_ceil(u64::from(fs.sb.block_size()));
                    let want = (data.len() as u64)
                        .saturating_sub(old_blocks * u64::from(fs.sb.block_size()));
                    Self::check_space(fs, path, want)?;
                    // Truncate, then write in the driver's journal-sized chunks: the driver's one-shot
                    // replace is a single transaction and fails once the file outgrows the journal.
                    // The copy-on-write transaction around this call keeps it all or nothing.
                    fs.apply_truncate_ino(target.ino, 0)
                        .map_err(|e| ext4_err("truncate", path, e))?;
                    if !data.is_empty() {
                        fs.apply_pwrite_ino(target.ino, 0, data)
                            .map_err(|e| ext4_err("write", path, e))?;
                    }
                    target.ino
                }
                None => {
                    Self::check_space(fs, path, data.len() as u64)?;
                    let ino = fs
                        .apply_create_at(dir.ino, name.as_bytes(), 0o600)
                        .map_err(|e| ext4_err("create", path, e))?;
                    if !data.is_empty() {
                        fs.apply_pwrite_ino(ino, 0, data)
                            .map_err(|e| ext4_err("write", path, e))?;
                    }
                    ino
                }
            };
            Self::apply_meta(fs, ino, meta, path)
        })
    }

    fn mkdir_p(&mut self, path: &str, meta: Meta) -> Result<(), FsError> {
        let parts = components(path)?;
        self.mutate("mkdir", path, |fs| {
            let mut dir = ROOT_INO;
            let mut so_far = String::new();
            for part in parts {
                so_far.push('/');
                so_far.push_str(part);
                let resolved = match Self::lookup(fs, dir, part)? {
                    Some(_) => Some(Self::resolve(fs, &so_far, true)?),
                    None => None,
                };
                dir = match resolved {
                    Some(r) => {
                        if Self::stat_of(fs, r.ino, &so_far)?.kind != Kind::Dir {
                            return Err(FsError::NotADirectory(so_far));
                        }
                        r.ino
                    }
                    None => {
                        Self::check_space(fs, &so_far, 4096)?;
                        let ino = fs
                            .apply_mkdir_at(dir, part.as_bytes(), 0o755)
                            .map_err(|e| ext4_err("mkdir", &so_far, e))?;
                        Self::apply_meta(fs, ino, meta, &so_far)?;
                        ino
                    }
                };
            }
            Ok(())
        })
    }

    fn symlink(&mut self, path: &str, target: &str, meta: Meta) -> Result<(), FsError> {
        if target.is_empty() || target.len() > 4095 || target.contains('\0') {
            return Err(FsError::InvalidPath {
                path: target.to_string(),
                reason: "a symlink target must be 1 to 4095 bytes without NUL",
            });
        }
        self.mutate("symlink", path, |fs| {
            let (dir, name) = Self::resolve_parent(fs, path)?;
            if let Some(ino) = Self::lookup(fs, dir.ino, name)? {
                match Self::stat_of(fs, ino, path)?.kind {
                    Kind::Dir => return Err(FsError::IsADirectory(path.to_string())),
                    _ => fs
                        .apply_unlink_at(dir.ino, name.as_bytes())
                        .map_err(|e| ext4_err("unlink", path, e))?,
                }
            }
            Self::check_space(fs, path, target.len() as u64)?;
            let ino = fs
                .apply_symlink_at(dir.ino, name.as_bytes(), target.as_bytes())
                .map_err(|e| ext4_err("symlink", path, e))?;
            // Symlink permissions mean nothing on Linux; owner and time do.
            fs.apply_chown_ino(ino, meta.uid, meta.gid)
                .map_err(|e| ext4_err("chown", path, e))?;
            fs.apply_utimens_ino(ino, meta.mtime, 0, meta.mtime, 0)
                .map_err(|e| ext4_err("utimens", path, e))
        })
    }

    fn remove(&mut self, path: &str) -> Result<(), FsError> {
        self.mutate("remove", path, |fs| {
            let (dir, name) = Self::resolve_parent(fs, path)?;
            let ino = Self::lookup(fs, dir.ino, name)?
                .ok_or_else(|| FsError::NotFound(path.to_string()))?;
            if Self::stat_of(fs, ino, path)?.kind == Kind::Dir {
                fs.apply_rmdir_at(dir.ino, name.as_bytes())
                    .map_err(|e| ext4_err("rmdir", path, e))
            } else {
                fs.apply_unlink_at(dir.ino, name.as_bytes())
                    .map_err(|e| ext4_err("unlink", path, e))
            }
        })
    }

    fn set_meta(&mut self, path: &str, meta: Meta) -> Result<(), FsError> {
        self.mutate("set metadata", path, |fs| {
            let r = Self::resolve(fs, path, false)?;
            if Self::stat_of(fs, r.ino, path)?.kind == Kind::Symlink {
                fs.apply_chown_ino(r.ino, meta.uid, meta.gid)
                    .map_err(|e| ext4_err("chown", path, e))?;
                return fs
                    .apply_utimens_ino(r.ino, meta.mtime, 0, meta.mtime, 0)
                    .map_err(|e| ext4_err("utimens", path, e));
            }
            Self::apply_meta(fs, r.ino, meta, path)
        })
    }
}
