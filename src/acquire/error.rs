//! Why a base image could not be acquired.

use std::io;
use std::path::PathBuf;

use crate::compress::DecodeError;

/// Everything that can go wrong while resolving, downloading, verifying or decoding a base.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The source names no local file, URL or OS-list entry pibake knows.
    #[error("no OS named {name:?} in the OS list {list}; choices: {}", .choices.join(", "))]
    UnknownOs {
        /// What the user asked for.
        name: String,
        /// The OS list consulted.
        list: String,
        /// Short names that exist.
        choices: Vec<String>,
    },
    /// The OS exists but not in the requested release.
    #[error("{name} has no release dated {date} in the OS list; releases listed: {}", .available.join(", "))]
    NoSuchRelease {
        /// Short name or name asked for.
        name: String,
        /// Release date asked for.
        date: String,
        /// Release dates the list has for that name.
        available: Vec<String>,
    },
    /// A local source path does not exist or cannot be read.
    #[error("cannot read the base image {path}: {source}")]
    Local {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The source string is not usable.
    #[error("{0}")]
    BadSource(String),
    /// The OS list could not be parsed or has the wrong shape.
    #[error("the OS list {url} is not valid: {reason}")]
    BadOsList {
        /// Where the list came from.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The chosen OS-list entry lacks a field pibake needs to verify it.
    #[error(
        "the OS-list entry {name:?} lacks the required field {field:?}, so it cannot be verified \
         (use its URL with --sha256 instead)"
    )]
    IncompleteEntry {
        /// Entry name.
        name: String,
        /// Missing or malformed field.
        field: &'static str,
    },
    /// The server answered with an error status (after retries, for transient ones).
    #[error("{url}: the server answered {status}{}", retried(*.attempts))]
    HttpStatus {
        /// The URL requested.
        url: String,
        /// HTTP status code.
        status: u16,
        /// Requests made.
        attempts: u32,
    },
    /// The server could not be reached or the transfer kept failing.
    #[error("{url}: {reason}{}", retried(*.attempts))]
    Network {
        /// The URL requested.
        url: String,
        /// The last failure.
        reason: String,
        /// Requests made.
        attempts: u32,
    },
    /// Downloaded or decoded bytes do not have the SHA-256 they must have.
    #[error(
        "SHA-256 mismatch for {what}: expected {expected}, got {actual} (expected value from \
         {expected_from}); the bad file was deleted"
    )]
    ChecksumMismatch {
        /// What was checked (a URL, a path, "decoded image of ...").
        what: String,
        /// The SHA-256 it should have.
        expected: String,
        /// The SHA-256 it has.
        actual: String,
        /// Where the expected value came from.
        expected_from: String,
    },
    /// A local file does not match `--sha256` (it is left alone).
    #[error("SHA-256 mismatch for {path}: expected {expected} (from --sha256), got {actual}")]
    LocalChecksumMismatch {
        /// The local file.
        path: PathBuf,
        /// Value given by the user.
        expected: String,
        /// Value of the file.
        actual: String,
    },
    /// The server sent more bytes than the OS list announced.
    #[error("{url}: the server sent more than the {expected} bytes announced; download refused")]
    TooLarge {
        /// The URL.
        url: String,
        /// Announced size.
        expected: u64,
    },
    /// No way to verify a URL download.
    #[error(
        "cannot verify {url}: the server has no {url}.sha256 and no --sha256 was given \
         (pass --sha256 HEX, or --insecure-no-verify to accept it unverified)"
    )]
    Unverifiable {
        /// The URL.
        url: String,
    },
    /// A SHA-256 given by the user or a sidecar file is not 64 hex digits.
    #[error("{what} is not a SHA-256 (64 hex digits): {value:?}")]
    BadSha256 {
        /// Where it came from.
        what: String,
        /// What it was.
        value: String,
    },
    /// The image could not be decoded.
    #[error("cannot decode {path}: {source}")]
    Decode {
        /// The compressed file.
        path: PathBuf,
        /// Why.
        source: DecodeError,
    },
    /// The disk holding the cache is full.
    #[error(
        "no space left on the device holding the cache {dir} (free some space, run `pibake \
         cache clean`, or choose another --cache-dir)"
    )]
    DiskFull {
        /// The cache directory.
        dir: PathBuf,
    },
    /// OpenPGP signature checking failed or was impossible.
    #[error("signature check of {url} failed: {reason}")]
    Signature {
        /// What was signed.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// Any other I/O failure (reading or writing the cache, a local file).
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn retried(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl AcquireError {
    /// True when the user (or what the user pointed at) is at fault: exit code 2. False for
    /// failures of pibake, the network or the machine: exit code 1.
    pub fn is_bad_input(&self) -> bool {
        match self {
            AcquireError::HttpStatus { status, .. } => (400..500).contains(status),
            AcquireError::Network { .. } | AcquireError::Io { .. } => false,
            AcquireError::Decode { source, .. } => source.is_bad_input(),
            _ => true,
        }
    }

    /// An I/O error at `path`, recognising a full disk.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
        cache: &std::path::Path,
        e: io::Error,
    ) -> Self {
        if is_disk_full(&e) {
            AcquireError::DiskFull {
                dir: cache.to_path_buf(),
            }
        } else {
            AcquireError::Io {
                what,
                path: path.into(),
                source: e,
            }
        }
    }
}

impl crate::error::Classify for AcquireError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

/// Whether an I/O error means the device is full.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}
