//! Recognise how an image is compressed and decode it to a sparse raw file.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::Serialize;

/// How an image file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A raw disk image.
    None,
    /// `.xz` (what Raspberry Pi OS ships).
    Xz,
    /// `.zst`.
    Zstd,
    /// `.gz`.
    Gzip,
}

impl Compression {
    /// Name as used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "raw",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

/// Why an image could not be recognised or decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A known compression format pibake does not read.
    #[error("unsupported compression: {0} (pibake reads raw .img, .img.xz, .img.zst and .img.gz)")]
    Unsupported(&'static str),
    /// The name promises a format the bytes do not have.
    #[error("the file is named .{ext} but does not start with {format} data")]
    NameMismatch {
        /// Extension of the file name.
        ext: String,
        /// Format that extension means.
        format: &'static str,
    },
    /// The compressed stream is damaged or cut short.
    #[error("{format} data is corrupt or truncated (after {offset} decoded bytes): {reason}")]
    Corrupt {
        /// Format being decoded.
        format: &'static str,
        /// Decoded bytes written before the failure.
        offset: u64,
        /// What the decoder said.
        reason: String,
    },
    /// Reading the input or writing the output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Identify the format of `path` from its first bytes, cross-checked against its extension.
pub fn detect(path: &Path) -> Result<Compression, DecodeError> {
    let mut head = [0u8; 8];
    let mut f = File::open(path)?;
    let n = read_up_to(&mut f, &mut head)?;
    let head = &head[..n];
    let found = sniff(head)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let promised = match ext.as_str() {
        "xz" => Some(Compression::Xz),
        "zst" | "zstd" => Some(Compression::Zstd),
        "gz" => Some(Compression::Gzip),
        _ => None,
    };
    match promised {
        Some(p) if p != found => Err(DecodeError::NameMismatch {
            ext,
            format: p.name(),
        }),
        _ => Ok(found),
    }
}

fn sniff(head: &[u8]) -> Result<Compression, DecodeError> {
    const UNSUPPORTED: &[(&[u8], &str)] = &[
        (b"BZh", "bzip2"),
        (b"\x04\x22\x4d\x18", "lz4"),
        (b"7z\xbc\xaf\x27\x1c", "7-zip"),
        (b"\x5d\x00\x00", "lzma (legacy .lzma)"),
        (b"PK\x03\x04", "zip (not yet: unzip it first)"),
    ];
    if head.starts_with(b"\xfd7zXZ\x00") {
        return Ok(Compression::Xz);
    }
    if head.starts_with(b"\x28\xb5\x2f\xfd") {
        return Ok(Compression::Zstd);
    }
    if head.starts_with(b"\x1f\x8b") {
        return Ok(Compression::Gzip);
    }
    for (magic, name) in UNSUPPORTED {
        if head.starts_with(magic) {
            return Err(DecodeError::Unsupported(name));
        }
    }
    Ok(Compression::None)
}

fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Decode `src` (in format `c`) into `dst`, leaving holes for all-zero blocks.
///
/// `progress` is called with the number of decoded bytes so far. Returns the decoded length.
pub fn decode_to(
    src: &Path,
    c: Compression,
    dst: &mut File,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, DecodeError> {
    let input = BufReader::with_capacity(1 << 20, File::open(src)?);
    let mut reader: Box<dyn Read> = match c {
        Compression::None => Box::new(input),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_stream(
            input,
            xz_decoder().map_err(|e| corrupt("xz", 0, e))?,
        )),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(input)?),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
    };
    let format = c.name();
    copy_sparse(&mut reader, dst, progress).map_err(|(offset, e)| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::Other
            if c != Compression::None =>
        {
            corrupt(format, offset, e)
        }
        _ => DecodeError::Io(e),
    })
}

fn corrupt(format: &'static str, offset: u64, e: impl ToString) -> DecodeError {
    DecodeError::Corrupt {
        format,
        offset,
        reason: e.to_string(),
    }
}

/// A multi-threaded xz decoder. liblzma falls back to one thread unless the threading memory
/// limit is raised, so it is set explicitly.
fn xz_decoder() -> Result<liblzma::stream::Stream, liblzma::stream::Error> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .memlimit_threading(u64::from(threads) * 256 << 20)
        .memlimit_stop(u64::MAX)
        .decoder()
}

const SPARSE_BLOCK: usize = 64 << 10;

/// Copy everything from `r` into `w`, seeking over all-zero blocks so the result is sparse.
/// On failure, returns how many bytes had been produced.
fn copy_sparse(
    r: &mut dyn Read,
    w: &mut File,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, (u64, io::Error)> {
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = read_up_to(r, &mut buf).map_err(|e| (total, e))?;
        if n == 0 {
            break;
        }
        for block in buf[..n].chunks(SPARSE_BLOCK) {
            if block.iter().all(|&b| b == 0) {
                w.seek(SeekFrom::Current(block.len() as i64))
                    .map_err(|e| (total, e))?;
            } else {
                w.write_all(block).map_err(|e| (total, e))?;
            }
            total += block.len() as u64;
        }
        progress(total);
    }
    // A trailing hole needs the length set explicitly, or the file ends early.
    w.set_len(total).map_err(|e| (total, e))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats_by_magic() {
        assert_eq!(sniff(b"\xfd7zXZ\x00\x00\x04").unwrap(), Compression::Xz);
        assert_eq!(sniff(b"\x28\xb5\x2f\xfd").unwrap(), Compression::Zstd);
        assert_eq!(sniff(b"\x1f\x8b\x08").unwrap(), Compression::Gzip);
        assert_eq!(sniff(&[0; 8]).unwrap(), Compression::None);
        assert!(matches!(
            sniff(b"BZh91AY"),
            Err(DecodeError::Unsupported("bzip2"))
        ));
    }

    #[test]
    fn round_trips_each_format_sparsely() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = vec![0u8; 3 << 20];
        raw[100..200].fill(7);
        raw[(2 << 20) + 5] = 1;
        let cases: Vec<(&str, Vec<u8>, Compression)> = vec![
            ("a.img", raw.clone(), Compression::None),
            (
                "a.img.xz",
                {
                    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                    e.write_all(&raw).unwrap();
                    e.finish().unwrap()
                },
                Compression::Xz,
            ),
            ("a.img.zst", zstd::encode_all(&raw[..], 1).unwrap(), Compression::Zstd),
            (
                "a.img.gz",
                {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(&raw).unwrap();
                    e.finish().unwrap()
                },
                Compression::Gzip,
            ),
        ];
        for (name, bytes, want) in cases {
            let src = dir.path().join(name);
            std::fs::write(&src, &bytes).unwrap();
            assert_eq!(detect(&src).unwrap(), want, "{name}");
            let dst_path = dir.path().join(format!("{name}.out"));
            let mut dst = File::create(&dst_path).unwrap();
            let n = decode_to(&src, want, &mut dst, &mut |_| {}).unwrap();
            assert_eq!(n, raw.len() as u64);
            assert_eq!(std::fs::read(&dst_path).unwrap(), raw, "{name}");
        }
    }

    #[test]
    fn truncated_xz_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 255) as u8).collect();
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&raw).unwrap();
        let mut xz = e.finish().unwrap();
        xz.truncate(xz.len() / 2);
        let src = dir.path().join("t.img.xz");
        std::fs::write(&src, &xz).unwrap();
        let mut dst = tempfile::tempfile().unwrap();
        let err = decode_to(&src, Compression::Xz, &mut dst, &mut |_| {}).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { format: "xz", .. }), "{err}");
    }

    #[test]
    fn a_name_that_lies_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("x.img.xz");
        std::fs::write(&src, [0u8; 1024]).unwrap();
        assert!(matches!(
            detect(&src),
            Err(DecodeError::NameMismatch { .. })
        ));
    }
}
