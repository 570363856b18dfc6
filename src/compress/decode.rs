//! Decode a compressed image to a sparse raw file.
//!
//! Decoding streams: memory stays bounded by one copy buffer plus the decoder's own state (for
//! multi-threaded xz, each worker holds about one block of input and output), whatever the size
//! of the image. All-zero blocks become holes in the output.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::{Compression, DecodeError, read_up_to};
use crate::xz::MtXzReader;

/// Decode `src` (in format `c`) into `dst`, leaving holes for all-zero blocks.
///
/// `progress` is called with the number of decoded bytes so far. Returns the decoded length.
pub fn decode_to(
    src: &Path,
    c: Compression,
    dst: &mut File,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, DecodeError> {
    decode_inner(src, c, dst, None, false, progress)
}

/// What [`decode_hashed`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Length of the decoded image in bytes.
    pub len: u64,
    /// SHA-256 of the decoded image.
    pub sha256: [u8; 32],
}

/// [`decode_to`], also computing the SHA-256 of the decoded bytes as they stream past.
///
/// `sha256_is_checked`: the caller compares the returned SHA-256 with a trusted value, so the
/// format's own weaker integrity check (the xz CRC64, slow in this liblzma build) is skipped.
/// Corruption is then reported as a SHA-256 mismatch instead of a decoding error.
pub fn decode_hashed(
    src: &Path,
    c: Compression,
    dst: &mut File,
    sha256_is_checked: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Decoded, DecodeError> {
    let mut hasher = Sha256::new();
    let len = decode_inner(src, c, dst, Some(&mut hasher), sha256_is_checked, progress)?;
    Ok(Decoded {
        len,
        sha256: hasher.finalize().into(),
    })
}

fn decode_inner(
    src: &Path,
    c: Compression,
    dst: &mut File,
    hasher: Option<&mut Sha256>,
    skip_check: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, DecodeError> {
    let consumed = Arc::new(AtomicU64::new(0));
    let file = File::open(src)?;
    if c == Compression::Zip {
        return decode_zip(file, dst, hasher, progress);
    }
    let input = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: file,
            count: consumed.clone(),
        },
    );
    let format = c.name();
    if c == Compression::Xz {
        // The decoder knows exactly how much input it consumed; prefer that to the read-ahead.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let mut xz = MtXzReader::new(input, threads, xz_memlimit(threads), skip_check)?;
        return copy_sparse(&mut xz, dst, hasher, progress)
            .map_err(|(offset, e)| classify(c, format, offset, xz.total_in(), e));
    }
    let mut reader: Box<dyn Read> = match c {
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(input)?),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        _ => Box::new(input),
    };
    copy_sparse(&mut reader, dst, hasher, progress).map_err(|(offset, e)| {
        let input_offset = consumed.load(Ordering::Relaxed);
        classify(c, format, offset, input_offset, e)
    })
}

fn classify(
    c: Compression,
    format: &'static str,
    offset: u64,
    input_offset: u64,
    e: CopyError,
) -> DecodeError {
    match e {
        CopyError::Write(e) => DecodeError::Io(e),
        CopyError::Read(e) => match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::Other
                if c != Compression::None =>
            {
                corrupt(format, offset, input_offset, e)
            }
            _ => DecodeError::Io(e),
        },
    }
}

/// Decode the single `.img` inside a zip archive.
fn decode_zip(
    file: File,
    dst: &mut File,
    hasher: Option<&mut Sha256>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, DecodeError> {
    let zip_err = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(e) => DecodeError::Io(e),
        other => corrupt("zip", 0, 0, other),
    };
    let mut archive =
        zip::ZipArchive::new(BufReader::with_capacity(1 << 20, file)).map_err(zip_err)?;
    let mut entries = Vec::new();
    let mut images = Vec::new();
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(zip_err)?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        if !entry.is_dir() && name.to_ascii_lowercase().ends_with(".img") {
            images.push((i, name.clone()));
        }
        entries.push(name);
    }
    let index = match images.as_slice() {
        [(i, _)] => *i,
        _ => {
            return Err(DecodeError::ZipImageCount {
                images: images.into_iter().map(|(_, n)| n).collect(),
                entries,
            });
        }
    };
    let mut entry = archive.by_index(index).map_err(zip_err)?;
    let input_offset = entry.compressed_size();
    let expected = entry.size();
    let n = copy_sparse(&mut entry, dst, hasher, progress)
        .map_err(|(offset, e)| classify(Compression::Zip, "zip", offset, input_offset, e))?;
    if n != expected {
        return Err(corrupt(
            "zip",
            n,
            input_offset,
            format!("the entry should decode to {expected} bytes"),
        ));
    }
    Ok(n)
}

/// Counts the bytes read through it, so a decoding error can say how far into the input it was.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn corrupt(format: &'static str, offset: u64, input_offset: u64, e: impl ToString) -> DecodeError {
    DecodeError::Corrupt {
        format,
        offset,
        input_offset,
        reason: e.to_string(),
    }
}

/// Memory liblzma may use for threaded decoding. liblzma falls back to one thread unless this
/// limit is raised, so it is set explicitly, generously: Raspberry Pi OS uses 24 MiB blocks, and
/// each worker needs about the compressed plus the uncompressed block, plus the dictionary.
fn xz_memlimit(threads: u32) -> u64 {
    (u64::from(threads) * 256) << 20
}

const SPARSE_BLOCK: usize = 64 << 10;
const COPY_BUFFER: usize = 4 << 20;

/// Which side of a copy failed.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copy everything from `r` into `w`, seeking over all-zero blocks so the result is sparse.
/// Holes are only made in a regular file; anything else (a device, `/dev/null`) gets every byte.
/// On failure, returns how many bytes had been produced.
///
/// One thread reads, hashes and writes: a pipeline with a separate writer thread was measured
/// slower on two cores (the decoder's workers already use them, and buffers then cross caches).
fn copy_sparse(
    r: &mut dyn Read,
    w: &mut File,
    hasher: Option<&mut Sha256>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, (u64, CopyError)> {
    let sparse = w.metadata().map(|m| m.is_file()).unwrap_or(false);
    let mut sink = SparseSink {
        w,
        sparse,
        hole: 0,
        written: 0,
        hasher,
    };
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = read_up_to(r, &mut buf).map_err(|e| (sink.written, CopyError::Read(e)))?;
        if n == 0 {
            break;
        }
        sink.put(&buf[..n])?;
        progress(sink.written);
    }
    sink.finish()
}

/// Where [`copy_sparse`] puts bytes: hashed, then written with holes for zero blocks.
struct SparseSink<'a> {
    w: &'a mut File,
    sparse: bool,
    /// A pending hole, only materialised by the next write or by `set_len` at the end.
    hole: i64,
    written: u64,
    hasher: Option<&'a mut Sha256>,
}

impl SparseSink<'_> {
    fn err(&self) -> impl Fn(io::Error) -> (u64, CopyError) + use<> {
        let at = self.written;
        move |e| (at, CopyError::Write(e))
    }

    fn put(&mut self, data: &[u8]) -> Result<(), (u64, CopyError)> {
        if let Some(h) = self.hasher.as_deref_mut() {
            h.update(data);
        }
        if !self.sparse {
            self.w.write_all(data).map_err(self.err())?;
            self.written += data.len() as u64;
            return Ok(());
        }
        let n = data.len();
        let mut run_start = 0;
        let mut pos = 0;
        while pos < n {
            let end = (pos + SPARSE_BLOCK).min(n);
            if is_zero(&data[pos..end]) {
                if run_start < pos {
                    self.w
                        .write_all(&data[run_start..pos])
                        .map_err(self.err())?;
                }
                self.hole += (end - pos) as i64;
                run_start = end;
            } else if self.hole > 0 {
                self.w
                    .seek(SeekFrom::Current(self.hole))
                    .map_err(self.err())?;
                self.hole = 0;
            }
            pos = end;
        }
        if run_start < n {
            self.w.write_all(&data[run_start..n]).map_err(self.err())?;
        }
        self.written += n as u64;
        Ok(())
    }

    fn finish(self) -> Result<u64, (u64, CopyError)> {
        if self.sparse {
            // A trailing hole needs the length set explicitly, or the file ends early.
            self.w.set_len(self.written).map_err(self.err())?;
        }
        Ok(self.written)
    }
}

/// Whether every byte is zero. OR-folds 64-byte runs, which the compiler vectorises, and stops
/// at the first run that is not zero.
fn is_zero(block: &[u8]) -> bool {
    block
        .chunks(64)
        .all(|run| run.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::super::detect;
    use super::*;

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
            (
                "a.img.zst",
                zstd::encode_all(&raw[..], 1).unwrap(),
                Compression::Zstd,
            ),
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
        assert!(
            matches!(err, DecodeError::Corrupt { format: "xz", .. }),
            "{err}"
        );
    }
}
