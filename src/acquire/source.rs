//! What the user named as a base: a local file, an http(s) URL, or an OS-list entry.

use std::path::{Path, PathBuf};

use super::error::AcquireError;

/// The short name used when no source is given: the newest Raspberry Pi OS Lite, 64-bit.
pub const DEFAULT_OS: &str = "lite-arm64";

/// A parsed base source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on this machine (raw or compressed).
    Local(PathBuf),
    /// An http(s) URL.
    Url(String),
    /// An entry of the OS list.
    Os(OsSelector),
}

/// Which OS-list entry: a short name (`lite-arm64`) or exact name, optionally at a release date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsSelector {
    /// Short name (`lite-arm64`, `trixie-lite-arm64`) or the entry's exact `name`.
    pub name: String,
    /// `YYYY-MM-DD`, or the newest release when absent.
    pub release_date: Option<String>,
}

impl std::fmt::Display for OsSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.release_date {
            Some(d) => write!(f, "{}@{d}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

const IMAGE_SUFFIXES: &[&str] = &[".img", ".xz", ".gz", ".zst", ".zstd", ".zip"];

impl Source {
    /// Interpret `s`: a URL when it has an http(s) scheme, a local file when it exists or looks
    /// like a path, otherwise an OS-list selector. An empty string means [`DEFAULT_OS`].
    pub fn parse(s: &str) -> Result<Self, AcquireError> {
        let s = s.trim();
        if s.is_empty() {
            return Self::parse(DEFAULT_OS);
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(Source::Url(s.to_string()));
        }
        if let Some(path) = lower.strip_prefix("file://").map(|_| &s[7..]) {
            return Ok(Source::Local(PathBuf::from(path)));
        }
        if lower.contains("://") {
            return Err(AcquireError::BadSource(format!(
                "{s}: only http://, https:// and file:// URLs are supported"
            )));
        }
        let looks_like_path = s.contains('/')
            || s.contains(std::path::MAIN_SEPARATOR)
            || IMAGE_SUFFIXES.iter().any(|x| lower.ends_with(x));
        if looks_like_path || Path::new(s).exists() {
            return Ok(Source::Local(PathBuf::from(s)));
        }
        let (name, date) = match s.rsplit_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if date.is_some_and(|d| !is_date(d)) {
            return Err(AcquireError::BadSource(format!(
                "{s}: the release after '@' must be a date YYYY-MM-DD, e.g. lite-arm64@2025-11-24"
            )));
        }
        if name.is_empty() {
            return Err(AcquireError::BadSource(format!(
                "{s}: no OS name before '@'"
            )));
        }
        Ok(Source::Os(OsSelector {
            name: name.to_string(),
            release_date: date.map(str::to_string),
        }))
    }
}

fn is_date(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(name: &str, date: Option<&str>) -> Source {
        Source::Os(OsSelector {
            name: name.into(),
            release_date: date.map(Into::into),
        })
    }

    #[test]
    fn parses_each_kind() {
        assert_eq!(Source::parse("").unwrap(), os("lite-arm64", None));
        assert_eq!(Source::parse("lite-armhf").unwrap(), os("lite-armhf", None));
        assert_eq!(
            Source::parse("lite-arm64@2025-11-24").unwrap(),
            os("lite-arm64", Some("2025-11-24"))
        );
        assert_eq!(
            Source::parse("Raspberry Pi OS Lite (64-bit)").unwrap(),
            os("Raspberry Pi OS Lite (64-bit)", None)
        );
        assert_eq!(
            Source::parse("https://example.org/a.img.xz").unwrap(),
            Source::Url("https://example.org/a.img.xz".into())
        );
        assert_eq!(
            Source::parse("base.img.xz").unwrap(),
            Source::Local("base.img.xz".into())
        );
        assert_eq!(Source::parse("./x").unwrap(), Source::Local("./x".into()));
        assert_eq!(
            Source::parse("file:///tmp/a.img").unwrap(),
            Source::Local("/tmp/a.img".into())
        );
    }

    #[test]
    fn refuses_nonsense() {
        assert!(Source::parse("lite-arm64@latest").is_err());
        assert!(Source::parse("@2025-01-01").is_err());
        assert!(Source::parse("ftp://host/a.img").is_err());
    }
}
