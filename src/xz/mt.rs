//! A multi-threaded xz reader on liblzma's own API, for the one option the `liblzma` crate's
//! builder does not expose: decoder flags.
//!
//! The flags matter for speed: the bundled liblzma is built without the carry-less-multiply
//! CRC64, so checking the per-block CRC64 costs about a third of the decode time. When the
//! caller verifies a trusted SHA-256 of every decoded byte anyway, the CRC adds nothing and is
//! skipped (`ignore_check`). Concatenated streams are always accepted, as `xz -d` does.

use std::io::{self, BufRead, Read};

use liblzma_sys as sys;

/// Decodes .xz from a buffered reader using every core.
pub struct MtXzReader<R: BufRead> {
    inner: R,
    strm: sys::lzma_stream,
    finished: bool,
}

impl<R: BufRead> MtXzReader<R> {
    /// A decoder with `threads` workers and a memory limit for threading of `memlimit_threading`
    /// (past it liblzma falls back to a single thread rather than fail).
    pub fn new(
        inner: R,
        threads: u32,
        memlimit_threading: u64,
        ignore_check: bool,
    ) -> io::Result<Self> {
        // SAFETY: an all-zero lzma_stream is LZMA_STREAM_INIT, and an all-zero lzma_mt is a valid
        // starting point (null pointers, zero integers) whose public fields are then set.
        let mut strm: sys::lzma_stream = unsafe { std::mem::zeroed() };
        // SAFETY: see above; lzma_mt is plain data for which all-zero is valid.
        let mut mt: sys::lzma_mt = unsafe { std::mem::zeroed() };
        mt.flags = sys::LZMA_CONCATENATED
            | if ignore_check {
                sys::LZMA_IGNORE_CHECK
            } else {
                0
            };
        mt.threads = threads.max(1);
        mt.timeout = 0;
        mt.memlimit_threading = memlimit_threading;
        mt.memlimit_stop = u64::MAX;
        // SAFETY: both pointers are valid for the call; liblzma copies what it needs from `mt`.
        let ret = unsafe { sys::lzma_stream_decoder_mt(&mut strm, &mt) };
        if ret != sys::LZMA_OK {
            // SAFETY: lzma_end is safe on a stream whose initialisation failed.
            unsafe { sys::lzma_end(&mut strm) };
            return Err(io::Error::other(format!(
                "cannot start the xz decoder (liblzma error {ret})"
            )));
        }
        Ok(MtXzReader {
            inner,
            strm,
            finished: false,
        })
    }

    /// Compressed bytes consumed so far.
    pub fn total_in(&self) -> u64 {
        self.strm.total_in
    }
}

impl<R: BufRead> Read for MtXzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished || buf.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.inner.fill_buf()?;
            let eof = input.is_empty();
            self.strm.next_in = input.as_ptr();
            self.strm.avail_in = input.len();
            self.strm.next_out = buf.as_mut_ptr();
            self.strm.avail_out = buf.len();
            let action = if eof { sys::LZMA_FINISH } else { sys::LZMA_RUN };
            // SAFETY: next_in/avail_in describe `input` and next_out/avail_out describe `buf`,
            // both valid for the duration of the call; the pointers are reset before every call.
            let ret = unsafe { sys::lzma_code(&mut self.strm, action) };
            let consumed = input.len() - self.strm.avail_in;
            let produced = buf.len() - self.strm.avail_out;
            self.strm.next_in = std::ptr::null();
            self.strm.avail_in = 0;
            self.strm.next_out = std::ptr::null_mut();
            self.strm.avail_out = 0;
            self.inner.consume(consumed);
            match ret {
                sys::LZMA_OK => {
                    if produced > 0 {
                        return Ok(produced);
                    }
                }
                sys::LZMA_STREAM_END => {
                    self.finished = true;
                    return Ok(produced);
                }
                sys::LZMA_BUF_ERROR => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the .xz data ends early (truncated)",
                    ));
                }
                other => return Err(lzma_error(other)),
            }
        }
    }
}

impl<R: BufRead> Drop for MtXzReader<R> {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended exactly once.
        unsafe { sys::lzma_end(&mut self.strm) };
    }
}

fn lzma_error(ret: sys::lzma_ret) -> io::Error {
    let (kind, what) = match ret {
        sys::LZMA_DATA_ERROR => (io::ErrorKind::InvalidData, "compressed data is corrupt"),
        sys::LZMA_FORMAT_ERROR => (io::ErrorKind::InvalidData, "not .xz data"),
        sys::LZMA_OPTIONS_ERROR => (io::ErrorKind::InvalidData, "unsupported .xz options"),
        sys::LZMA_MEM_ERROR => (io::ErrorKind::OutOfMemory, "out of memory"),
        sys::LZMA_MEMLIMIT_ERROR => (io::ErrorKind::OutOfMemory, "memory limit reached"),
        _ => (io::ErrorKind::Other, "decoder failure"),
    };
    io::Error::new(kind, format!("{what} (liblzma error {ret})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_concatenated_streams_and_detects_damage() {
        let mut data = xz(b"hello ");
        data.extend(xz(b"world"));
        for ignore in [false, true] {
            let mut out = Vec::new();
            MtXzReader::new(&data[..], 2, 1 << 28, ignore)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, b"hello world");
        }
        let cut = &data[..data.len() - 10];
        let e = MtXzReader::new(cut, 2, 1 << 28, false)
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = MtXzReader::new(&b"not xz at all"[..], 2, 1 << 28, false)
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
