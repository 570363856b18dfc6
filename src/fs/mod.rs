//! Files inside an image's partitions, read and edited through one trait.
//!
//! [`FileOps`] is the only way the rest of pibake touches a filesystem: [`ext4::Ext4`] implements
//! it for the root partition (over `rust-fs-ext4`), [`fat::Fat`] for the boot partition (over
//! `fatfs`). Both edit a copy-on-write view of the image, and each mutating call is all or nothing:
//! a failure puts every block it touched back as it was.
//!
//! Beside the drivers, `ext4::free` and `fat::free` read each format's on-disk structures
//! directly (through [`ReadAt`]) to say which bytes are free, for outputs that skip free space.

pub mod edit;
pub mod ext4;
pub mod fat;
pub(crate) mod le;
pub mod path;
pub mod ranges;

/// The bytes of one partition, for readers of on-disk structures.
pub trait ReadAt {
    /// Partition length in bytes.
    fn len(&self) -> u64;
    /// Whether the partition is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from partition offset `at`; reading past the end is an error.
    fn read_at(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// A partition's bytes on a device (the base, or the base with its changes), for the readers of
/// on-disk structures; reading past the partition's end is an error, not the next partition.
pub struct Window<'a> {
    dev: &'a dyn crate::disk::BlockDev,
    offset: u64,
    len: u64,
}

impl<'a> Window<'a> {
    /// `len` bytes of `dev` from `offset`.
    pub fn new(dev: &'a dyn crate::disk::BlockDev, offset: u64, len: u64) -> Self {
        Self { dev, offset, len }
    }
}

impl ReadAt for Window<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if at.saturating_add(buf.len() as u64) > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "filesystem structure past the partition end",
            ));
        }
        self.dev.read_at(self.offset + at, buf)
    }
}

/// Free byte ranges, relative to the partition, of the `kind` filesystem in `part`, as its own
/// allocation maps record them; `None` for a filesystem (or layout) no map here models.
pub fn free_ranges(
    kind: crate::disk::FsKind,
    part: &dyn ReadAt,
) -> std::io::Result<Option<Vec<std::ops::Range<u64>>>> {
    use crate::disk::FsKind;
    match kind {
        FsKind::Ext4 => ext4::free::free_ranges(part),
        FsKind::Vfat => fat::free::free_ranges(part),
        FsKind::Unknown => Ok(None),
    }
}

use serde::Serialize;

/// What kind of object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Device, FIFO or socket.
    Other,
}

/// Metadata of one object, as `stat` (not following a final symlink) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stat {
    /// Object kind.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (for a symlink, the target's length).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Hard-link count.
    pub nlink: u32,
}

/// One directory entry.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Name within the directory.
    pub name: String,
    /// Its metadata.
    pub stat: Stat,
}

/// Ownership, permissions and time given to what pibake writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// Permission bits (`0o644`); ignored on FAT.
    pub mode: u32,
    /// Owner; ignored on FAT.
    pub uid: u32,
    /// Group; ignored on FAT.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

impl Meta {
    /// `mode`, owned by root, stamped `mtime`.
    pub fn root(mode: u32, mtime: i64) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
}

/// Why a filesystem operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Nothing at the path.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A component before the last is not a directory.
    #[error("{0}: a component of the path is not a directory")]
    NotADirectory(String),
    /// A directory where a file was expected.
    #[error("{0}: is a directory, expected a file")]
    IsADirectory(String),
    /// The path already exists with another kind.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// `remove` on a directory that still has entries.
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// A path that is relative, escapes the partition, or is otherwise unusable.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given (lossily shown).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Symlinks that never end.
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(String),
    /// Not enough free space for the edit; nothing was written.
    #[error(
        "{partition} partition is full: {}", no_space_detail(path, *needed, *free)
    )]
    NoSpace {
        /// `root` or `boot`.
        partition: &'static str,
        /// What was being written.
        path: String,
        /// Bytes the edit needs.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// The ext4 journal holds transactions that were never replayed.
    #[error(
        "the root filesystem was not shut down cleanly (its journal needs recovery); run `e2fsck -fy` on the partition, or start from a clean image"
    )]
    NeedsRecovery,
    /// The ext4 superblock records errors found by the kernel.
    #[error(
        "the root filesystem is marked as having errors; run `e2fsck -fy` on the partition, or start from a clean image"
    )]
    HasErrors,
    /// ext4 features pibake cannot write safely.
    #[error(
        "the root filesystem uses features pibake cannot write safely: {0} (see \"ext4 support\" in the README; reading such images still works)"
    )]
    UnsupportedFeatures(String),
    /// The root partition lacks the `extent` feature: an ext2 or ext3 filesystem, or an ext4
    /// made without extents, which pibake does not write.
    #[error(
        "the root partition is ext2/ext3 (no `extent` feature); pibake writes ext4 with extents only, as every Raspberry Pi OS release has (`tune2fs -O extent` does not convert existing files; start from a Raspberry Pi OS image)"
    )]
    NoExtents,
    /// The ext4 structures contradict themselves: the image is damaged or truncated.
    #[error("the root partition's ext4 filesystem is damaged ({op} {path}: {detail})")]
    Damaged {
        /// What pibake was doing.
        op: &'static str,
        /// The path it was doing it to.
        path: String,
        /// What was found wrong, in the driver's words.
        detail: String,
    },
    /// The FAT boot sector is not valid.
    #[error("the boot partition is not a valid FAT filesystem: {0}")]
    BadFat(String),
    /// The operation has no meaning on this filesystem (e.g. symlinks on FAT).
    #[error("{op} is not possible on a {fs} filesystem ({path})")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// `FAT` or `ext4`.
        fs: &'static str,
        /// The path it was asked for.
        path: String,
    },
    /// The ext4 driver refused or failed.
    #[error("ext4 {op} {path}: {detail}")]
    Ext4 {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
        /// The driver's error.
        detail: String,
    },
    /// Reading or writing the image failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn no_space_detail(path: &str, needed: u64, free: u64) -> String {
    if needed == 0 {
        format!("no room left for {path}")
    } else {
        format!("{path} needs about {needed} bytes but only {free} are free")
    }
}

impl FsError {
    /// True when the user's input (image, path, recipe) is at fault rather than pibake.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, FsError::Ext4 { .. } | FsError::Io(_))
    }
}

impl crate::error::Classify for FsError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            FsError::Damaged { .. } => Some(
                "check the root partition with `e2fsck -fn` (`e2fsck -fy` repairs it), or download the image again"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The operations every stage above the filesystems uses. Paths are absolute in the partition.
pub trait FileOps {
    /// Metadata of `path`, not following a final symlink.
    fn stat(&mut self, path: &str) -> Result<Stat, FsError>;

    /// Contents of the file at `path`, following symlinks inside the partition.
    fn read(&mut self, path: &str) -> Result<Vec<u8>, FsError>;

    /// Target of the symlink at `path`.
    fn read_link(&mut self, path: &str) -> Result<String, FsError>;

    /// Entries of the directory at `path` (without `.` and `..`), sorted by name.
    fn list(&mut self, path: &str) -> Result<Vec<Entry>, FsError>;

    /// Create or replace the file at `path` with `data`, then set `meta` on it.
    fn write_file(&mut self, path: &str, data: &[u8], meta: Meta) -> Result<(), FsError>;

    /// Create `path` and any missing parents as directories with `meta`; existing ones are kept.
    fn mkdir_p(&mut self, path: &str, meta: Meta) -> Result<(), FsError>;

    /// Create (or replace) a symlink at `path` pointing at `target`.
    fn symlink(&mut self, path: &str, target: &str, meta: Meta) -> Result<(), FsError>;

    /// Remove a file, symlink or empty directory.
    fn remove(&mut self, path: &str) -> Result<(), FsError>;

    /// Change mode, owner and mtime of an existing object.
    fn set_meta(&mut self, path: &str, meta: Meta) -> Result<(), FsError>;

    /// Whether the filesystem stores modes and owners (ext4) or not (FAT).
    fn has_ownership(&self) -> bool {
        true
    }

    /// True if something exists at `path` (not following a final symlink).
    fn exists(&mut self, path: &str) -> Result<bool, FsError> {
        match self.stat(path) {
            Ok(_) => Ok(true),
            Err(FsError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
