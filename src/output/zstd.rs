//! `.img.zst`: one zstd frame, compressed by worker threads.
//!
//! The frame records the content size and a checksum (so `zstd -t` checks every byte). zstd's
//! multi-threaded mode cuts the input into jobs whose size depends only on the compression
//! parameters, so the output is the same whatever the number of workers (at least one: the
//! single-threaded mode, zero workers, would give a different, equally valid, frame).

use std::io::BufWriter;
use std::path::Path;

use ::zstd::stream::write::Encoder;
use ::zstd::zstd_safe::CParameter;

use super::{Format, Hashing, OutputError, Staged, Written, threads, write_encoded};
use crate::disk::CowDisk;
use crate::progress::Progress;

/// Compression level: zstd's default, as `zstd -T0` uses. Higher levels cost much more time for
/// a few percent on images that are mostly already-compressed packages.
pub const LEVEL: i32 = 3;

/// Write `disk` to `dest` as a multi-threaded `.zst`.
pub fn write(disk: &CowDisk, dest: &Path, progress: &dyn Progress) -> Result<Written, OutputError> {
    write_with_workers(disk, dest, threads(), progress)
}

/// [`write()`] with an explicit number of worker threads (at least one is used).
pub fn write_with_workers(
    disk: &CowDisk,
    dest: &Path,
    workers: u32,
    progress: &dyn Progress,
) -> Result<Written, OutputError> {
    let staged = Staged::new(dest)?;
    let encoder_err = |e: std::io::Error| OutputError::Encoder {
        format: "zstd",
        path: staged.dest().to_path_buf(),
        detail: e.to_string(),
    };
    let sink = Hashing::new(BufWriter::with_capacity(1 << 20, staged.file()?));
    let mut encoder = Encoder::new(sink, LEVEL).map_err(encoder_err)?;
    encoder
        .set_parameter(CParameter::NbWorkers(workers.max(1)))
        .map_err(encoder_err)?;
    encoder.include_checksum(true).map_err(encoder_err)?;
    encoder.include_contentsize(true).map_err(encoder_err)?;
    encoder
        .set_pledged_src_size(Some(disk.len()))
        .map_err(encoder_err)?;
    write_encoded(
        disk,
        staged,
        encoder,
        Encoder::finish,
        Format::Zstd,
        "compressing (zstd)",
        progress,
    )
}
