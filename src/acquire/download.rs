//! HTTP(S) transfers: small documents (OS lists, checksum sidecars) and resumable, verified
//! downloads of images.
//!
//! A download streams into a partial file while its SHA-256 is computed. When the connection
//! fails it is resumed with `Range` (guarded by `If-Range` with the server's validator, so a file
//! that changed on the server is fetched again from the start); a server that ignores `Range`
//! gets a restart from zero. Transient failures (connection errors, 408, 429, 5xx) are retried
//! with exponential backoff; an attempt that made progress resets the retry budget.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{
    ACCEPT_ENCODING, CONTENT_RANGE, ETAG, HeaderMap, IF_RANGE, LAST_MODIFIED, RANGE,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AcquireOptions;
use super::error::AcquireError;
#[cfg(test)]
use super::error::is_disk_full;
use crate::progress::Progress;

const CHUNK: usize = 1 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// An HTTP client configured from [`AcquireOptions`].
pub struct Http {
    client: Client,
    retries: u32,
    backoff: Duration,
    fail_writes_after: Option<u64>,
}

/// A finished, fully received download (not yet checked against anything).
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Lower-case hex SHA-256 of the bytes received.
    pub sha256: String,
    /// Number of bytes.
    pub size: u64,
}

/// What the server said about the resource, kept beside a partial download to resume it later.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Validator {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Validator {
    fn from_headers(url: &str, h: &HeaderMap) -> Self {
        let get = |k| {
            h.get(k)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        Validator {
            url: url.to_string(),
            // A weak ETag must not be used with If-Range.
            etag: get(ETAG).filter(|e| !e.starts_with("W/")),
            last_modified: get(LAST_MODIFIED),
        }
    }

    fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }
}

/// One failed attempt: retry it or give up.
enum Failure {
    Transient(String),
    Fatal(AcquireError),
}

impl Http {
    /// A client honouring the proxy environment variables (`HTTPS_PROXY`, `HTTP_PROXY`,
    /// `ALL_PROXY`, `NO_PROXY`) unless `opts.use_env_proxy` is false.
    pub fn new(opts: &AcquireOptions) -> Result<Self, AcquireError> {
        let mut b = Client::builder()
            .user_agent(concat!("pibake/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.timeout)
            .timeout(opts.timeout);
        if !opts.use_env_proxy {
            b = b.no_proxy();
        }
        let client = b.build().map_err(|e| AcquireError::Network {
            url: String::new(),
            reason: format!("cannot set up the HTTP client: {e}"),
            attempts: 0,
        })?;
        Ok(Http {
            client,
            retries: opts.retries,
            backoff: opts.backoff,
            fail_writes_after: opts.fail_writes_after,
        })
    }

    fn sleep_before(&self, attempt: u32) {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        std::thread::sleep(self.backoff.saturating_mul(factor).min(MAX_BACKOFF));
    }

    /// GET a small document (at most `max` bytes). `Ok(None)` when the server says 404/410.
    pub fn get_small(&self, url: &str, max: usize) -> Result<Option<Vec<u8>>, AcquireError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.get_small_once(url, max, attempt);
            match outcome {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(reason)) => {
                    if attempt > self.retries {
                        return Err(self.gave_up(url, reason, attempt));
                    }
                    self.sleep_before(attempt);
                }
            }
        }
    }

    fn gave_up(&self, url: &str, reason: String, attempts: u32) -> AcquireError {
        match reason.strip_prefix("status ").and_then(|s| s.parse().ok()) {
            Some(status) => AcquireError::HttpStatus {
                url: url.to_string(),
                status,
                attempts,
            },
            None => AcquireError::Network {
                url: url.to_string(),
                reason,
                attempts,
            },
        }
    }

    fn get_small_once(
        &self,
        url: &str,
        max: usize,
        attempt: u32,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let resp = self
            .client
            .get(url)
            .header(ACCEPT_ENCODING, "identity")
            .send()
            .map_err(|e| Failure::Transient(describe(&e)))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Ok(None);
        }
        check_status(url, status, attempt)?;
        let mut body = Vec::new();
        resp.take(max as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| Failure::Transient(format!("connection failed while reading: {e}")))?;
        if body.len() > max {
            return Err(Failure::Fatal(AcquireError::TooLarge {
                url: url.to_string(),
                expected: max as u64,
            }));
        }
        Ok(Some(body))
    }

    /// Download `url` into `partial` (resuming what is already there when the validator
    /// recorded beside it still matches), computing its SHA-256.
    ///
    /// `expected_size`, when known, bounds the transfer: more bytes are refused at once.
    /// `cache_dir` names the directory in a disk-full error.
    pub fn download(
        &self,
        url: &str,
        partial: &Path,
        expected_size: Option<u64>,
        cache_dir: &Path,
        label: &str,
        progress: &dyn Progress,
    ) -> Result<Downloaded, AcquireError> {
        let io_err = |what, e: io::Error| AcquireError::io(what, partial, cache_dir, e);
        let meta_path = validator_path(partial);
        let saved: Option<Validator> = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|v: &Validator| v.url == url && v.if_range().is_some());
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)
            .map_err(|e| io_err("cannot create", e))?;
        let mut state = Transfer {
            hasher: Sha256::new(),
            have: 0,
            validator: None,
        };
        progress.begin(label, expected_size);
        if let Some(v) = saved {
            // Resume across runs: hash what is already there.
            let len = file.metadata().map_err(|e| io_err("cannot read", e))?.len();
            if expected_size.is_none_or(|n| len <= n) && len > 0 {
                state.have = hash_prefix(&mut file, len, &mut state.hasher, progress)
                    .map_err(|e| io_err("cannot read", e))?;
                state.validator = Some(v);
            }
        }
        if state.have == 0 {
            state
                .restart(&mut file)
                .map_err(|e| io_err("cannot truncate", e))?;
        }
        let mut writer = LimitedWriter {
            file: &mut file,
            written: state.have,
            fail_after: self.fail_writes_after,
        };
        let mut attempt = 0u32;
        let result = loop {
            attempt += 1;
            let before = state.have;
            match self.download_once(
                url,
                &mut writer,
                &mut state,
                expected_size,
                (partial, &meta_path, cache_dir),
                progress,
            ) {
                Ok(()) => break Ok(()),
                Err(Failure::Fatal(e)) => break Err(e),
                Err(Failure::Transient(reason)) => {
                    if state.have > before {
                        // Progress was made: this was a dropped connection, not a dead server.
                        attempt = 1;
                    }
                    if attempt > self.retries {
                        break Err(self.gave_up(url, reason, attempt));
                    }
                    self.sleep_before(attempt);
                }
            }
        };
        progress.end();
        match result {
            Ok(()) => {
                writer
                    .file
                    .sync_all()
                    .map_err(|e| io_err("cannot write", e))?;
                let _ = std::fs::remove_file(&meta_path);
                Ok(Downloaded {
                    sha256: hex::encode(state.hasher.finalize()),
                    size: state.have,
                })
            }
            Err(e) => {
                if matches!(e, AcquireError::TooLarge { .. }) {
                    discard_partial(partial);
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn download_once(
        &self,
        url: &str,
        w: &mut LimitedWriter<'_>,
        st: &mut Transfer,
        expected_size: Option<u64>,
        (partial, meta_path, cache_dir): (&Path, &Path, &Path),
        progress: &dyn Progress,
    ) -> Result<(), Failure> {
        let io_fail =
            |e: io::Error| Failure::Fatal(AcquireError::io("cannot write", partial, cache_dir, e));
        if expected_size.is_some_and(|n| st.have == n) && st.have > 0 {
            // Everything is already here (a previous run was stopped before the end).
            return Ok(());
        }
        let mut req = self.client.get(url).header(ACCEPT_ENCODING, "identity");
        if st.have > 0 {
            req = req.header(RANGE, format!("bytes={}-", st.have));
            if let Some(v) = st.validator.as_ref().and_then(Validator::if_range) {
                req = req.header(IF_RANGE, v);
            }
        }
        let resp = req.send().map_err(|e| Failure::Transient(describe(&e)))?;
        let status = resp.status();
        match status {
            StatusCode::PARTIAL_CONTENT if st.have > 0 => {
                let start = content_range_start(resp.headers());
                if start != Some(st.have) {
                    st.restart(w.file).map_err(io_fail)?;
                    w.written = 0;
                    return Err(Failure::Transient(format!(
                        "the server resumed at the wrong offset ({start:?} instead of {})",
                        st.have
                    )));
                }
            }
            StatusCode::OK => {
                if st.have > 0 {
                    // Range ignored, or the file changed on the server: start again from zero.
                    st.restart(w.file).map_err(io_fail)?;
                    w.written = 0;
                    progress.set(0);
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                st.restart(w.file).map_err(io_fail)?;
                w.written = 0;
                return Err(Failure::Transient(
                    "the server refused to resume (416); starting again".into(),
                ));
            }
            s => check_status(url, s, 1)
                .and_then(|()| Err(Failure::Transient(format!("unexpected status {s}"))))?,
        }
        let v = Validator::from_headers(url, resp.headers());
        if v.if_range().is_some() {
            if let Ok(json) = serde_json::to_vec(&v) {
                let _ = std::fs::write(meta_path, json);
            }
            st.validator = Some(v);
        }
        self.stream_body(url, resp, w, st, expected_size, progress, io_fail)
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_body(
        &self,
        url: &str,
        mut resp: Response,
        w: &mut LimitedWriter<'_>,
        st: &mut Transfer,
        expected_size: Option<u64>,
        progress: &dyn Progress,
        io_fail: impl Fn(io::Error) -> Failure,
    ) -> Result<(), Failure> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    w.file.flush().map_err(&io_fail)?;
                    return Err(Failure::Transient(format!(
                        "connection dropped after {} bytes: {e}",
                        st.have
                    )));
                }
            };
            if let Some(max) = expected_size.filter(|&max| st.have + n as u64 > max) {
                return Err(Failure::Fatal(AcquireError::TooLarge {
                    url: url.to_string(),
                    expected: max,
                }));
            }
            w.write_all(&buf[..n]).map_err(&io_fail)?;
            st.hasher.update(&buf[..n]);
            st.have += n as u64;
            progress.set(st.have);
        }
        if let Some(want) = expected_size.filter(|&want| st.have < want) {
            return Err(Failure::Transient(format!(
                "the connection ended after {} of {want} bytes",
                st.have
            )));
        }
        Ok(())
    }
}

/// Hashing state of one download across attempts.
struct Transfer {
    hasher: Sha256,
    have: u64,
    validator: Option<Validator>,
}

impl Transfer {
    fn restart(&mut self, file: &mut File) -> io::Result<()> {
        self.hasher = Sha256::new();
        self.have = 0;
        self.validator = None;
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(())
    }
}

/// Writes to the partial file; can be told to fail with "no space left" after some bytes
/// (a test seam for the full-disk path, see [`AcquireOptions::fail_writes_after`]).
struct LimitedWriter<'a> {
    file: &'a mut File,
    written: u64,
    fail_after: Option<u64>,
}

impl Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self
            .fail_after
            .is_some_and(|limit| self.written + buf.len() as u64 > limit)
        {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn hash_prefix(
    file: &mut File,
    len: u64,
    hasher: &mut Sha256,
    progress: &dyn Progress,
) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut r = (&mut *file).take(len);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.set(done);
    }
    file.seek(SeekFrom::Start(done))?;
    Ok(done)
}

/// Where the validator of a partial download is kept.
pub(crate) fn validator_path(partial: &Path) -> PathBuf {
    let mut s = partial.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Delete a partial download and its validator.
pub(crate) fn discard_partial(partial: &Path) {
    let _ = std::fs::remove_file(partial);
    let _ = std::fs::remove_file(validator_path(partial));
}

fn content_range_start(h: &HeaderMap) -> Option<u64> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, _) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    start.trim().parse().ok()
}

/// Classify a status: success passes, transient ones are retried, the rest are fatal.
fn check_status(url: &str, status: StatusCode, attempts: u32) -> Result<(), Failure> {
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Err(Failure::Transient(format!("status {}", status.as_u16())))
    } else {
        Err(Failure::Fatal(AcquireError::HttpStatus {
            url: url.to_string(),
            status: status.as_u16(),
            attempts,
        }))
    }
}

/// A reqwest error with its causes, on one line.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn parses_content_range() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/200"));
        assert_eq!(content_range_start(&h), Some(100));
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes */200"));
        assert_eq!(content_range_start(&h), None);
    }

    #[test]
    fn weak_etags_are_not_used_for_if_range() {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("W/\"x\""));
        h.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
        );
        let v = Validator::from_headers("u", &h);
        assert_eq!(v.if_range(), Some("Mon, 01 Jan 2024 00:00:00 GMT"));
    }

    #[test]
    fn limited_writer_reports_a_full_disk() {
        let mut f = tempfile::tempfile().unwrap();
        let mut w = LimitedWriter {
            file: &mut f,
            written: 0,
            fail_after: Some(10),
        };
        w.write_all(b"12345").unwrap();
        let e = w.write_all(b"1234567890").unwrap_err();
        assert!(is_disk_full(&e));
    }
}
