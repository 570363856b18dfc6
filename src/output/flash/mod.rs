//! Writing an image to a card: only the mapped blocks, in large aligned writes, synced, then
//! read back and compared range by range.
//!
//! The device is checked first ([`safety`]): a mounted, system or fixed disk is refused unless
//! forced. Writing goes through the [`Target`] trait, implemented for real devices and regular
//! files by [`DeviceTarget`]; tests implement it to inject short writes and corrupt reads.
//! Which blocks are written comes from a bmap or from the image's filesystems
//! ([`crate::output::bmap::mapped_ranges`]); blocks left out are free space, so what they held
//! before does not matter.

pub mod safety;

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bmap::{self, BmapError, MappedRange};
use crate::disk::{CowDisk, Image};
use crate::progress::Progress;

pub use safety::{DiskInfo, Host, Refusal};

/// Bytes per write: large, and every write starts on a multiple of it (or at a range start).
pub const CHUNK: u64 = 4 << 20;

/// Why flashing failed.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The device failed a safety check.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The path names no device or file.
    #[error("{path}: no such device or file")]
    NotFound {
        /// The device path.
        path: PathBuf,
    },
    /// The path names something that cannot hold an image.
    #[error("{path} is {what}, not a disk or an image file")]
    NotADevice {
        /// The device path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// The device could not be opened.
    #[error("cannot open {path} for writing: {source}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The device is smaller than the image.
    #[error("{path} holds {device} bytes, too small for the {image}-byte image")]
    TooSmall {
        /// The device path.
        path: PathBuf,
        /// Its size.
        device: u64,
        /// The image size.
        image: u64,
    },
    /// The block map does not fit the image.
    #[error(transparent)]
    Bmap(#[from] BmapError),
    /// The image's bytes do not match the checksum its block map records.
    #[error(
        "the image does not match its block map: bytes {start}..{end} have sha256 {actual}, the bmap records {expected}"
    )]
    ImageMismatch {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Recorded.
        expected: String,
        /// Found.
        actual: String,
    },
    /// Reading the image failed.
    #[error("reading the image at offset {offset}: {source}")]
    ReadImage {
        /// Where.
        offset: u64,
        /// What the OS said.
        source: io::Error,
    },
    /// The device accepted nothing more: it is full, gone, or lying about its size.
    #[error(
        "short write at offset {offset}: the device took {written} of {wanted} bytes and then nothing more"
    )]
    ShortWrite {
        /// Where the write started.
        offset: u64,
        /// Bytes asked for.
        wanted: usize,
        /// Bytes accepted.
        written: usize,
    },
    /// A write failed.
    #[error("writing the device at offset {offset}: {source}")]
    Write {
        /// Where.
        offset: u64,
        /// What the OS said.
        source: io::Error,
    },
    /// Flushing to the device failed.
    #[error("syncing the device: {0}")]
    Sync(io::Error),
    /// Reading back failed.
    #[error("reading the device back at offset {offset}: {source}")]
    ReadBack {
        /// Where.
        offset: u64,
        /// What the OS said.
        source: io::Error,
    },
    /// What the device holds is not what was written.
    #[error(
        "verification failed: the device differs from the image at byte offset {offset} (range {start}..{end})"
    )]
    VerifyFailed {
        /// First differing byte.
        offset: u64,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
}

impl FlashError {
    /// True when the user's request is at fault (wrong device, a device in use, a bmap for
    /// another image), not the device or the machine.
    pub fn is_bad_input(&self) -> bool {
        match self {
            FlashError::Refused(_)
            | FlashError::NotFound { .. }
            | FlashError::NotADevice { .. }
            | FlashError::TooSmall { .. }
            | FlashError::ImageMismatch { .. } => true,
            FlashError::Open { source, .. } => source.kind() == io::ErrorKind::ResourceBusy,
            FlashError::Bmap(e) => e.is_bad_input(),
            FlashError::ReadImage { .. }
            | FlashError::ShortWrite { .. }
            | FlashError::Write { .. }
            | FlashError::Sync(_)
            | FlashError::ReadBack { .. }
            | FlashError::VerifyFailed { .. } => false,
        }
    }
}

impl crate::error::Classify for FlashError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

/// Where an image is written: a card, or a file standing in for one.
pub trait Target {
    /// Size in bytes.
    fn size(&mut self) -> io::Result<u64>;
    /// Write some of `data` at `offset`; returns how much was written, which may be less.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<usize>;
    /// Fill `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Make everything written durable, and make later reads come from the medium rather than
    /// from a cache of what was written.
    fn sync(&mut self) -> io::Result<()>;
    /// Called once before the first write of an image of `image_len` bytes: a regular file
    /// standing in for a card grows to the image size here. Does nothing by default.
    fn prepare(&mut self, image_len: u64) -> io::Result<()> {
        let _ = image_len;
        Ok(())
    }
}

/// Whether a target is a block device or a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A disk.
    BlockDevice,
    /// A regular file (tests, or writing an image onto another filesystem).
    File,
}

/// A device or file opened for flashing, after the safety checks.
#[derive(Debug)]
pub struct DeviceTarget {
    file: File,
    grows: bool,
}

impl DeviceTarget {
    /// Wrap an already open file (read and write access); a regular file grows to the image's
    /// size when flashing starts if it is shorter.
    pub fn from_file(file: File) -> Self {
        let grows = file.metadata().is_ok_and(|m| m.is_file());
        Self { file, grows }
    }
}

impl Target for DeviceTarget {
    fn size(&mut self) -> io::Result<u64> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::End(0))
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<usize> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.write_at(data, offset)
        }
        #[cfg(windows)]
        {
            use std::os::windows::fs::FileExt;
            self.file.seek_write(data, offset)
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.read_exact_at(buf, offset)
        }
        #[cfg(windows)]
        {
            use std::os::windows::fs::FileExt;
            let mut done = 0;
            while done < buf.len() {
                match self
                    .file
                    .seek_read(&mut buf[done..], offset + done as u64)?
                {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => done += n,
                }
            }
            Ok(())
        }
    }

    fn prepare(&mut self, image_len: u64) -> io::Result<()> {
        if self.grows && self.size()? < image_len {
            self.file.set_len(image_len)?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // Drop the now clean cached pages so reading back asks the device.
            // SAFETY: plain syscall on a file descriptor this struct owns.
            let rc = unsafe {
                libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
            };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        Ok(())
    }
}

/// What [`open_target`] found about the target.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// The path as given.
    pub path: PathBuf,
    /// Device or file.
    pub kind: TargetKind,
    /// For a block device, what sysfs says about it.
    pub disk: Option<DiskInfo>,
}

impl TargetInfo {
    /// One line naming the target, for the confirmation question.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.disk) {
            (TargetKind::BlockDevice, Some(d)) => {
                format!("{} ({})", self.path.display(), d.description)
            }
            (TargetKind::BlockDevice, None) => format!("{} (block device)", self.path.display()),
            (TargetKind::File, _) => format!("{} (regular file)", self.path.display()),
        }
    }
}

/// Check `path` and open it for an image of `image_len` bytes. A block device must pass
/// [`safety::check_block_device`] (on Linux; elsewhere only with `force`); a regular file must
/// exist, and grows to the image size when flashing starts (not before: a refused
/// confirmation leaves it untouched). The device is opened exclusively where
/// the OS allows (Linux `O_EXCL`: fails while anything has it mounted).
pub fn open_target(
    path: &Path,
    image_len: u64,
    force: bool,
    host: &Host,
) -> Result<(DeviceTarget, TargetInfo), FlashError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FlashError::NotFound {
            path: path.to_path_buf(),
        },
        _ => FlashError::Open {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let open_err = |source| FlashError::Open {
        path: path.to_path_buf(),
        source,
    };
    let kind = classify(&meta).map_err(|what| FlashError::NotADevice {
        path: path.to_path_buf(),
        what,
    })?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true);
    let disk = match kind {
        TargetKind::File => None,
        TargetKind::BlockDevice => {
            let info = check_device(path, &meta, force, host)?;
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.custom_flags(libc::O_EXCL);
            }
            Some(info)
        }
    };
    let file = opts.open(path).map_err(open_err)?;
    let mut target = DeviceTarget::from_file(file);
    let len = target.size().map_err(open_err)?;
    if len < image_len && kind == TargetKind::BlockDevice {
        return Err(FlashError::TooSmall {
            path: path.to_path_buf(),
            device: len,
            image: image_len,
        });
    }
    Ok((
        target,
        TargetInfo {
            path: path.to_path_buf(),
            kind,
            disk,
        },
    ))
}

fn classify(meta: &std::fs::Metadata) -> Result<TargetKind, &'static str> {
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(TargetKind::File);
    }
    if ft.is_dir() {
        return Err("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_block_device() {
            return Ok(TargetKind::BlockDevice);
        }
        if ft.is_char_device() {
            return Err("a character device");
        }
    }
    Err("not a regular file or block device")
}

#[cfg(target_os = "linux")]
fn check_device(
    _path: &Path,
    meta: &std::fs::Metadata,
    force: bool,
    host: &Host,
) -> Result<DiskInfo, FlashError> {
    use std::os::unix::fs::MetadataExt;
    Ok(safety::check_block_device(
        safety::dev_num(meta.rdev()),
        host,
        force,
    )?)
}

#[cfg(not(target_os = "linux"))]
fn check_device(
    path: &Path,
    _meta: &std::fs::Metadata,
    force: bool,
    _host: &Host,
) -> Result<DiskInfo, FlashError> {
    let refusal = Refusal::Unsupported {
        path: path.display().to_string(),
    };
    if !force {
        return Err(refusal.into());
    }
    Ok(DiskInfo {
        name: path.display().to_string(),
        description: "unchecked device".into(),
        bytes: None,
        overridden: vec![refusal],
    })
}

/// The ranges to write for `image`: those of the bmap at `bmap_path` (with their checksums), or
/// the image's own mapped blocks.
pub fn ranges_for(image: &Image, bmap_path: Option<&Path>) -> Result<Vec<MappedRange>, FlashError> {
    match bmap_path {
        Some(p) => Ok(bmap::read(p, image.disk.len())?.ranges),
        None => Ok(bmap::mapped_ranges(image)?
            .into_iter()
            .map(|bytes| MappedRange {
                bytes,
                sha256: None,
            })
            .collect()),
    }
}

/// What flashing did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlashReport {
    /// Size of the image.
    pub image_bytes: u64,
    /// Bytes written to the device (the mapped bytes).
    pub written_bytes: u64,
    /// Bytes read back and compared.
    pub verified_bytes: u64,
    /// Number of mapped ranges.
    pub ranges: usize,
    /// Write calls issued.
    pub writes: u64,
}

/// Write `ranges` of `disk` to `target`, sync, read them back and compare SHA-256 per range.
pub fn flash(
    disk: &CowDisk,
    target: &mut dyn Target,
    ranges: &[MappedRange],
    progress: &dyn Progress,
) -> Result<FlashReport, FlashError> {
    let image_len = disk.len();
    target
        .prepare(image_len)
        .map_err(|source| FlashError::Write { offset: 0, source })?;
    let device_len = target
        .size()
        .map_err(|source| FlashError::Write { offset: 0, source })?;
    if device_len < image_len {
        return Err(FlashError::TooSmall {
            path: PathBuf::from("the device"),
            device: device_len,
            image: image_len,
        });
    }
    let total: u64 = ranges.iter().map(|r| r.bytes.end - r.bytes.start).sum();
    if let Some(r) = ranges.iter().find(|r| r.bytes.end > image_len) {
        return Err(FlashError::ImageMismatch {
            start: r.bytes.start,
            end: r.bytes.end,
            expected: "a range inside the image".into(),
            actual: format!("an image of {image_len} bytes"),
        });
    }
    let mut buf = vec![0u8; CHUNK as usize];
    let mut sums = Vec::with_capacity(ranges.len());
    let mut writes = 0u64;

    progress.begin("writing", Some(total));
    let mut done = 0;
    for r in ranges {
        let mut sha = Sha256::new();
        for piece in pieces(&r.bytes) {
            let n = (piece.end - piece.start) as usize;
            disk.read_at(piece.start, &mut buf[..n])
                .map_err(|source| FlashError::ReadImage {
                    offset: piece.start,
                    source,
                })?;
            sha.update(&buf[..n]);
            writes += write_all(target, piece.start, &buf[..n])?;
            done += n as u64;
            progress.set(done);
        }
        let sum = hex::encode(sha.finalize());
        if let Some(expected) = &r.sha256
            && !expected.eq_ignore_ascii_case(&sum)
        {
            progress.end();
            return Err(FlashError::ImageMismatch {
                start: r.bytes.start,
                end: r.bytes.end,
                expected: expected.clone(),
                actual: sum,
            });
        }
        sums.push(sum);
    }
    progress.end();
    target.sync().map_err(FlashError::Sync)?;

    progress.begin("verifying", Some(total));
    let mut done = 0;
    for (r, want) in ranges.iter().zip(&sums) {
        let mut sha = Sha256::new();
        for piece in pieces(&r.bytes) {
            let n = (piece.end - piece.start) as usize;
            target
                .read_at(piece.start, &mut buf[..n])
                .map_err(|source| FlashError::ReadBack {
                    offset: piece.start,
                    source,
                })?;
            sha.update(&buf[..n]);
            done += n as u64;
            progress.set(done);
        }
        if hex::encode(sha.finalize()) != *want {
            progress.end();
            let offset = first_difference(disk, target, &r.bytes)?;
            return Err(FlashError::VerifyFailed {
                offset,
                start: r.bytes.start,
                end: r.bytes.end,
            });
        }
    }
    progress.end();
    Ok(FlashReport {
        image_bytes: image_len,
        written_bytes: total,
        verified_bytes: total,
        ranges: ranges.len(),
        writes,
    })
}

/// Split `r` at multiples of [`CHUNK`], so writes are large and aligned.
fn pieces(r: &Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
    let mut at = r.start;
    std::iter::from_fn(move || {
        if at >= r.end {
            return None;
        }
        let end = ((at / CHUNK + 1) * CHUNK).min(r.end);
        let piece = at..end;
        at = end;
        Some(piece)
    })
}

/// Write all of `data`, resuming after short writes; a write that takes nothing is an error.
/// Returns the number of write calls.
fn write_all(target: &mut dyn Target, offset: u64, data: &[u8]) -> Result<u64, FlashError> {
    let mut done = 0;
    let mut calls = 0;
    while done < data.len() {
        calls += 1;
        match target.write_at(offset + done as u64, &data[done..]) {
            Ok(0) => {
                return Err(FlashError::ShortWrite {
                    offset,
                    wanted: data.len(),
                    written: done,
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(FlashError::Write {
                    offset: offset + done as u64,
                    source,
                });
            }
        }
    }
    Ok(calls)
}

/// The first byte of `r` where the device and the image differ (the range's start if a second
/// read no longer differs: the device returned different data on two reads).
fn first_difference(
    disk: &CowDisk,
    target: &mut dyn Target,
    r: &Range<u64>,
) -> Result<u64, FlashError> {
    let mut want = vec![0u8; CHUNK as usize];
    let mut got = vec![0u8; CHUNK as usize];
    for piece in pieces(r) {
        let n = (piece.end - piece.start) as usize;
        disk.read_at(piece.start, &mut want[..n])
            .map_err(|source| FlashError::ReadImage {
                offset: piece.start,
                source,
            })?;
        target
            .read_at(piece.start, &mut got[..n])
            .map_err(|source| FlashError::ReadBack {
                offset: piece.start,
                source,
            })?;
        if let Some(i) = want[..n].iter().zip(&got[..n]).position(|(a, b)| a != b) {
            return Ok(piece.start + i as u64);
        }
    }
    Ok(r.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_aligned_to_chunks() {
        let r = CHUNK - 4096..2 * CHUNK + 8192;
        let v: Vec<_> = pieces(&r).collect();
        assert_eq!(
            v,
            vec![
                CHUNK - 4096..CHUNK,
                CHUNK..2 * CHUNK,
                2 * CHUNK..2 * CHUNK + 8192
            ]
        );
    }
}
