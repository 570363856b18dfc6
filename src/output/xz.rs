//! `.img.xz`: liblzma's multi-threaded encoder, laid out like Raspberry Pi OS's own images.
//!
//! Preset 6, CRC64 checks, and a new block every 24 MiB of input (three times the 8 MiB
//! dictionary, what `xz -T0 -6` chooses). Each block is compressed on its own, so the output
//! depends on the block size and never on how many threads did the work: it is the same on a
//! laptop and a 64-core builder, and any block can be decoded without the ones before it.

use std::io::BufWriter;
use std::path::Path;

use liblzma::stream::{Check, MtStreamBuilder};
use liblzma::write::XzEncoder;

use super::{Format, Hashing, OutputError, Staged, Written, threads, write_encoded};
use crate::disk::CowDisk;
use crate::progress::Progress;

pub use crate::xz::PRESET;
/// Uncompressed bytes per .xz block.
pub const BLOCK_SIZE: u64 = 24 << 20;

/// Write `disk` to `dest` as a multi-block `.xz`.
pub fn write(disk: &CowDisk, dest: &Path, progress: &dyn Progress) -> Result<Written, OutputError> {
    write_with_threads(disk, dest, threads(), progress)
}

/// [`write()`] with an explicit number of encoder threads (at least one is used).
pub fn write_with_threads(
    disk: &CowDisk,
    dest: &Path,
    threads: u32,
    progress: &dyn Progress,
) -> Result<Written, OutputError> {
    let staged = Staged::new(dest)?;
    let encoder_err = |e: liblzma::stream::Error| OutputError::Encoder {
        format: "xz",
        path: staged.dest().to_path_buf(),
        detail: e.to_string(),
    };
    let stream = MtStreamBuilder::new()
        .preset(PRESET)
        .check(Check::Crc64)
        .block_size(BLOCK_SIZE)
        .threads(threads.max(1))
        .timeout_ms(0)
        .encoder()
        .map_err(encoder_err)?;
    let sink = Hashing::new(BufWriter::with_capacity(1 << 20, staged.file()?));
    let encoder = XzEncoder::new_stream(sink, stream);
    write_encoded(
        disk,
        staged,
        encoder,
        XzEncoder::finish,
        Format::Xz,
        "compressing (xz)",
        progress,
    )
}
