//! Opening an image file: read it in place (raw, or a multi-block `.xz`) or from the decoded copy
//! its caller made, read its partition table, find boot and root. Decoding is not done here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compress::{self, Compression, DecodeError};

use super::cow::CowDisk;
use super::device::{BlockDev, FileDev};
use super::partition::{self, FsKind, Partition, PartitionError, PartitionTable};
use super::region::Region;
use super::xz::{XzDev, XzError};

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The path does not name a readable file.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The image path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is compressed in a way pibake does not read, or the data is damaged.
    #[error("{path}: {source}")]
    Decode {
        /// The image path.
        path: PathBuf,
        /// The decoding problem.
        source: DecodeError,
    },
    /// The `.xz` container is damaged (its index, headers or footer).
    #[error("{path}: {source}")]
    Xz {
        /// The image path.
        path: PathBuf,
        /// What is wrong.
        source: XzError,
    },
    /// The partition table is missing, damaged, or points outside the file.
    #[error("{path}: {source}")]
    Partition {
        /// The image path.
        path: PathBuf,
        /// The table problem.
        source: PartitionError,
    },
    /// No FAT partition to boot from.
    #[error("{path}: no FAT boot partition found (partitions hold: {found})")]
    NoBoot {
        /// The image path.
        path: PathBuf,
        /// What each partition holds, for the message.
        found: String,
    },
    /// The image can only be read from its start: the caller must decode it first and open the
    /// decoded copy with [`Image::open_decoded`].
    #[error(
        "{path}: {} data must be decoded before the image is opened ({reason})",
        .compression.name()
    )]
    NotDecoded {
        /// The image path.
        path: PathBuf,
        /// How it is compressed.
        compression: Compression,
        /// Why it cannot be read in place.
        reason: String,
    },
    /// No ext4 root partition.
    #[error(
        "{path}: no ext4 root filesystem: partition {index} holds {fs}, not ext4 (pibake edits Raspberry Pi OS images, whose second partition is ext4)"
    )]
    NoRoot {
        /// The image path.
        path: PathBuf,
        /// The partition expected to be root.
        index: u32,
        /// What it holds instead.
        fs: &'static str,
    },
}

impl ImageError {
    /// True when the image itself is at fault (as opposed to the machine pibake runs on).
    pub fn is_bad_input(&self) -> bool {
        match self {
            ImageError::Unreadable { source, .. } => {
                source.kind() == std::io::ErrorKind::NotFound
                    || source.kind() == std::io::ErrorKind::InvalidInput
            }
            ImageError::Decode { source, .. } => !matches!(source, DecodeError::Io(_)),
            ImageError::Xz { source, .. } => source.is_bad_input(),
            ImageError::Partition { source, .. } => !matches!(source, PartitionError::Io(_)),
            ImageError::NoBoot { .. } | ImageError::NoRoot { .. } => true,
            ImageError::NotDecoded { .. } => false,
        }
    }
}

impl crate::error::Classify for ImageError {
    fn kind(&self) -> crate::error::Kind {
        if let ImageError::NotDecoded { .. } = self {
            // Every caller decodes first: reaching this is a bug in the caller.
            crate::error::Kind::Internal
        } else if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

/// How the bytes of the base are reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Access {
    /// A raw image file, read in place.
    Raw,
    /// A multi-block `.xz` read in place: only the blocks that reads touch are decoded.
    XzBlocks {
        /// Blocks in the file.
        blocks: usize,
        /// Uncompressed size of the largest block.
        block_size: u64,
    },
    /// A multi-block `.xz` whose decoded copy is in the cache: reads go to the copy, and
    /// `.img.xz` outputs still copy the `.xz` file's untouched blocks verbatim.
    XzCachedCopy {
        /// Blocks in the file.
        blocks: usize,
        /// Uncompressed size of the largest block.
        block_size: u64,
    },
    /// Decoded in full to a temporary file first, because the format allows nothing better.
    Decoded {
        /// Why, in words for the user.
        reason: String,
    },
}

impl Access {
    /// One line for `plan` and `build`.
    pub fn describe(&self) -> String {
        match self {
            Access::Raw => "raw image, read in place".into(),
            Access::XzBlocks { blocks, block_size } => format!(
                "random access into {blocks} xz blocks of {} MiB (only the blocks read are decoded)",
                block_size >> 20
            ),
            Access::XzCachedCopy { blocks, block_size } => format!(
                "{blocks} xz blocks of {} MiB, read from their decoded copy in the cache",
                block_size >> 20
            ),
            Access::Decoded { reason } => format!("decoded in full first: {reason}"),
        }
    }
}

/// The compression of `path`, how its bytes can be reached, and the opened `.xz` when it can be
/// read in place.
fn probe(path: &Path) -> Result<(Compression, Access, Option<XzDev>), ImageError> {
    let compression = compress::detect(path).map_err(|source| ImageError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    match compression {
        Compression::None => Ok((compression, Access::Raw, None)),
        Compression::Xz => match XzDev::open(path, xz_cache_blocks()) {
            Ok(dev) => {
                let index = dev.index();
                let access = Access::XzBlocks {
                    blocks: index.blocks().len(),
                    block_size: index
                        .blocks()
                        .iter()
                        .map(|b| b.uncompressed_size)
                        .max()
                        .unwrap_or(0),
                };
                Ok((compression, access, Some(dev)))
            }
            Err(XzError::NotRandomAccess { reason }) => {
                Ok((compression, Access::Decoded { reason }, None))
            }
            Err(source) => Err(ImageError::Xz {
                path: path.to_path_buf(),
                source,
            }),
        },
        _ => Ok((
            compression,
            Access::Decoded {
                reason: format!(
                    "{} data can only be read from the start",
                    compression.name()
                ),
            },
            None,
        )),
    }
}

/// Decoded xz blocks kept in memory while an image is read at random.
const XZ_CACHE_BLOCKS: usize = 4;

fn xz_cache_blocks() -> usize {
    std::env::var("PIBAKE_XZ_CACHE_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(XZ_CACHE_BLOCKS)
}

/// An opened image: the read-only base, the copy-on-write layer over it, and its partitions.
pub struct Image {
    /// The file the user named.
    pub source: PathBuf,
    /// How that file was compressed.
    pub compression: Compression,
    /// Base plus changes; the base file is never written.
    pub disk: Arc<CowDisk>,
    /// The partition table as read from the base.
    pub table: PartitionTable,
    /// How the base's bytes are reached.
    pub access: Access,
    /// The `.xz` base read in place, when [`Access::XzBlocks`].
    pub xz: Option<Arc<XzDev>>,
    /// The caller's temporary decoded copy of a compressed image, removed when the image is
    /// dropped.
    _decoded: Option<tempfile::TempPath>,
}

impl Image {
    /// Open `path` read-only, in place: a raw image, or a multi-block `.xz` read block by block.
    /// An image that can only be read from its start (gzip, zstd, zip, a single-block `.xz`) is
    /// refused with [`ImageError::NotDecoded`]: decode it first (see [`crate::compress`]) and
    /// open the result with [`Image::open_decoded`].
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        Self::open_inner(path, None)
    }

    /// Open the multi-block `.xz` at `path` reading its bytes from `copy`, its decoded copy (same
    /// bytes, no decoding); the `.xz` stays open for copying its blocks verbatim.
    pub fn open_with_decoded_copy(path: &Path, copy: &Path) -> Result<Self, ImageError> {
        Self::open_inner(path, Some(copy))
    }

    /// Open `decoded`, the raw image the caller decoded from `source` (compressed as
    /// `compression`), as `source`'s image; `reason` says why it had to be decoded. `keep`, when
    /// given, is `decoded`'s temporary path, removed when the image is dropped.
    pub fn open_decoded(
        source: &Path,
        decoded: &Path,
        compression: Compression,
        reason: String,
        keep: Option<tempfile::TempPath>,
    ) -> Result<Self, ImageError> {
        let dev = FileDev::open(decoded).map_err(|source| ImageError::Unreadable {
            path: decoded.to_path_buf(),
            source,
        })?;
        let mut image = Self::on_base(source, Arc::new(dev))?;
        image.compression = compression;
        image.access = Access::Decoded { reason };
        image._decoded = keep;
        Ok(image)
    }

    fn open_inner(path: &Path, copy: Option<&Path>) -> Result<Self, ImageError> {
        let unreadable = |source| ImageError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        if meta.is_dir() {
            return Err(unreadable(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is a directory",
            )));
        }
        let (compression, mut access, xz) = probe(path)?;
        let xz = xz.map(Arc::new);
        let copy = match (copy, &access) {
            (Some(c), Access::XzBlocks { blocks, block_size }) => {
                access = Access::XzCachedCopy {
                    blocks: *blocks,
                    block_size: *block_size,
                };
                let dev = FileDev::open(c).map_err(|source| ImageError::Unreadable {
                    path: c.to_path_buf(),
                    source,
                })?;
                Some(Arc::new(dev) as Arc<dyn BlockDev>)
            }
            _ => None,
        };
        let base: Arc<dyn BlockDev> = if let Some(dev) = copy {
            dev
        } else if let Some(dev) = &xz {
            dev.clone()
        } else if compression == Compression::None {
            Arc::new(FileDev::open(path).map_err(unreadable)?)
        } else {
            let reason = match access {
                Access::Decoded { reason } => reason,
                other => other.describe(),
            };
            return Err(ImageError::NotDecoded {
                path: path.to_path_buf(),
                compression,
                reason,
            });
        };
        let mut image = Self::on_base(path, base)?;
        image.compression = compression;
        image.access = access;
        image.xz = xz;
        Ok(image)
    }

    /// `base` under a copy-on-write layer, with its partition table read; errors name `path`.
    fn on_base(path: &Path, base: Arc<dyn BlockDev>) -> Result<Self, ImageError> {
        let unreadable = |source| ImageError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let disk = Arc::new(CowDisk::new(base));
        let whole = Region::new(disk.clone(), 0, disk.len(), false).map_err(unreadable)?;
        let table = partition::read(&whole).map_err(|source| ImageError::Partition {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            source: path.to_path_buf(),
            compression: Compression::None,
            disk,
            table,
            access: Access::Raw,
            xz: None,
            _decoded: None,
        })
    }

    /// A second, independent image over the same base: its own copy-on-write layer, the same
    /// base device (so an `.xz` base's decoded blocks are shared, not decoded again). Fails
    /// only for an image holding a temporary decoded copy, whose lifetime it cannot share.
    pub fn fork(&self) -> Option<Self> {
        if self._decoded.is_some() {
            return None;
        }
        Some(Self {
            source: self.source.clone(),
            compression: self.compression,
            disk: Arc::new(CowDisk::new(self.disk.base())),
            table: self.table.clone(),
            access: self.access.clone(),
            xz: self.xz.clone(),
            _decoded: None,
        })
    }

    /// How [`Image::open`] would reach `path`'s bytes, found without decoding anything.
    pub fn probe(path: &Path) -> Result<(Compression, Access), ImageError> {
        probe(path).map(|(c, a, _)| (c, a))
    }

    /// Read the base from `copy` from now on: the decoded copy of this image's `.xz` (same bytes,
    /// no decoding). The `.xz` stays open for copying its blocks verbatim.
    pub fn use_decoded_copy(&mut self, copy: &Path) -> Result<(), ImageError> {
        let unreadable = |source| ImageError::Unreadable {
            path: copy.to_path_buf(),
            source,
        };
        let dev = FileDev::open(copy).map_err(unreadable)?;
        self.disk.rebase(Arc::new(dev)).map_err(unreadable)?;
        if let Access::XzBlocks { blocks, block_size } = self.access {
            self.access = Access::XzCachedCopy { blocks, block_size };
        }
        Ok(())
    }

    /// The boot partition: the first FAT partition.
    pub fn boot(&self) -> Result<&Partition, ImageError> {
        self.table
            .partitions
            .iter()
            .find(|p| p.fs == FsKind::Vfat)
            .ok_or_else(|| ImageError::NoBoot {
                path: self.source.clone(),
                found: self.describe(),
            })
    }

    /// The root partition: the first ext4 partition.
    pub fn root(&self) -> Result<&Partition, ImageError> {
        if let Some(p) = self.table.partitions.iter().find(|p| p.fs == FsKind::Ext4) {
            return Ok(p);
        }
        // Name the partition a Raspberry Pi OS image would have its root on.
        let expected = self
            .table
            .partitions
            .iter()
            .find(|p| p.index == 2)
            .or(self.table.partitions.last());
        Err(ImageError::NoRoot {
            path: self.source.clone(),
            index: expected.map_or(2, |p| p.index),
            fs: expected.map_or("nothing", |p| p.fs.name()),
        })
    }

    /// A view of partition `p`; `writable` views write into the copy-on-write layer.
    pub fn region(&self, p: &Partition, writable: bool) -> std::io::Result<Region> {
        Region::new(self.disk.clone(), p.offset(), p.bytes(), writable)
    }

    fn describe(&self) -> String {
        self.table
            .partitions
            .iter()
            .map(|p| format!("{}: {}", p.index, p.fs.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
