//! The Raspberry Pi OS list (the JSON that Raspberry Pi Imager reads): fetching it with its
//! nested `subitems` and `subitems_url`, naming its entries, and choosing one.

use std::collections::HashSet;

use reqwest::Url;
use serde::Serialize;
use serde_json::{Map, Value};

use super::download::Http;
use super::error::AcquireError;
use super::source::OsSelector;

/// Where Raspberry Pi Imager reads its list.
pub const DEFAULT_OS_LIST: &str =
    "https://downloads.raspberrypi.com/os_list_imagingutility_v4.json";

/// Lists nested deeper than this are ignored (a guard against loops).
const MAX_DEPTH: usize = 8;
/// An OS list larger than this is refused.
const MAX_LIST_BYTES: usize = 32 << 20;

/// One image of the OS list. Fields are optional as found; [`OsEntry::require`] checks that an
/// entry has what pibake needs before it is used.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OsEntry {
    /// `name` as in the list.
    pub name: String,
    /// pibake's short name: `lite-arm64`, `lite-armhf`, `desktop-arm64`, `full-arm64`, ...
    pub short_name: Option<String>,
    /// Debian suite taken from the file name (`trixie`, `bookworm`), when recognisable.
    pub suite: Option<String>,
    /// Download URL.
    pub url: Option<String>,
    /// `release_date`, `YYYY-MM-DD`.
    pub release_date: Option<String>,
    /// `extract_size`: bytes of the decoded image.
    pub extract_size: Option<u64>,
    /// `extract_sha256`: SHA-256 of the decoded image.
    pub extract_sha256: Option<String>,
    /// `image_download_size`: bytes of the download.
    pub image_download_size: Option<u64>,
    /// `image_download_sha256`: SHA-256 of the download.
    pub image_download_sha256: Option<String>,
    /// `init_format`: `systemd`, `cloudinit-rpi`, ... (empty when absent).
    pub init_format: String,
    /// Categories this entry is nested in, outermost first.
    pub category: Vec<String>,
    /// Nesting depth (0 = top level); shallower entries win ties.
    #[serde(skip)]
    pub depth: usize,
    /// Position in the list, in reading order; earlier entries win ties.
    #[serde(skip)]
    pub order: usize,
}

/// The fields of an entry that pibake needs, all present and well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required {
    /// Download URL.
    pub url: String,
    /// Release date.
    pub release_date: String,
    /// SHA-256 of the download (lower-case hex).
    pub download_sha256: String,
    /// SHA-256 of the decoded image (lower-case hex).
    pub extract_sha256: String,
    /// Bytes of the download, when listed.
    pub download_size: Option<u64>,
    /// Bytes of the decoded image.
    pub extract_size: u64,
}

impl OsEntry {
    /// The fields needed to download and verify this entry, or which one is missing.
    pub fn require(&self) -> Result<Required, AcquireError> {
        let missing = |field| AcquireError::IncompleteEntry {
            name: self.name.clone(),
            field,
        };
        let sha = |v: &Option<String>, field| {
            v.as_deref()
                .and_then(super::normalize_sha256)
                .ok_or_else(|| missing(field))
        };
        Ok(Required {
            url: self.url.clone().ok_or_else(|| missing("url"))?,
            release_date: self
                .release_date
                .clone()
                .ok_or_else(|| missing("release_date"))?,
            download_sha256: sha(&self.image_download_sha256, "image_download_sha256")?,
            extract_sha256: sha(&self.extract_sha256, "extract_sha256")?,
            download_size: self.image_download_size,
            extract_size: self.extract_size.ok_or_else(|| missing("extract_size"))?,
        })
    }

    /// Size to show: decoded size when known, else download size.
    pub fn size(&self) -> Option<u64> {
        self.extract_size.or(self.image_download_size)
    }
}

/// Fetch the OS list at `url` (http(s), `file://` or a path) and every list nested in it.
pub fn load(http: &Http, url: &str) -> Result<Vec<OsEntry>, AcquireError> {
    let root = to_url(url)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let doc = fetch_json(http, &root)?;
    seen.insert(root.to_string());
    let fetch = |url: &Url| fetch_json(http, url);
    walk_document(&fetch, &root, &doc, &[], 0, &mut seen, &mut out)?;
    Ok(out)
}

/// How a nested list (`subitems_url`) is fetched: over HTTP in [`load`], refused by [`parse`].
type Fetch<'a> = dyn Fn(&Url) -> Result<Value, AcquireError> + 'a;

/// The entries of the OS list `bytes`, as if fetched from `base` (which relative URLs resolve
/// against); a nested list behind a `subitems_url` is an error, as nothing is fetched.
pub fn parse(base: &str, bytes: &[u8]) -> Result<Vec<OsEntry>, AcquireError> {
    let root = Url::parse(base).map_err(|e| AcquireError::BadSource(format!("{base}: {e}")))?;
    let doc = serde_json::from_slice(bytes).map_err(|e| AcquireError::BadOsList {
        url: root.to_string(),
        reason: format!("not JSON: {e}"),
    })?;
    let refuse = |url: &Url| {
        Err(AcquireError::BadOsList {
            url: url.to_string(),
            reason: "a nested list, and this list is read without fetching anything".into(),
        })
    };
    let (mut seen, mut out) = (HashSet::from([root.to_string()]), Vec::new());
    walk_document(&refuse, &root, &doc, &[], 0, &mut seen, &mut out)?;
    Ok(out)
}

fn to_url(s: &str) -> Result<Url, AcquireError> {
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("file:") {
        return Url::parse(s).map_err(|e| AcquireError::BadSource(format!("{s}: {e}")));
    }
    let path = std::path::absolute(s).map_err(|e| AcquireError::Local {
        path: s.into(),
        source: e,
    })?;
    Url::from_file_path(&path)
        .map_err(|()| AcquireError::BadSource(format!("{s}: not a usable path for an OS list")))
}

fn fetch_json(http: &Http, url: &Url) -> Result<Value, AcquireError> {
    let bytes = if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| AcquireError::BadSource(format!("{url}: not a local path")))?;
        std::fs::read(&path).map_err(|e| AcquireError::Local { path, source: e })?
    } else {
        http.get_small(url.as_str(), MAX_LIST_BYTES)?
            .ok_or_else(|| AcquireError::HttpStatus {
                url: url.to_string(),
                status: 404,
                attempts: 1,
            })?
    };
    serde_json::from_slice(&bytes).map_err(|e| AcquireError::BadOsList {
        url: url.to_string(),
        reason: format!("not JSON: {e}"),
    })
}

fn walk_document(
    fetch: &Fetch<'_>,
    base: &Url,
    doc: &Value,
    category: &[String],
    depth: usize,
    seen: &mut HashSet<String>,
    out: &mut Vec<OsEntry>,
) -> Result<(), AcquireError> {
    let items = match doc {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("os_list") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(AcquireError::BadOsList {
                    url: base.to_string(),
                    reason: "no \"os_list\" array at the top level".into(),
                });
            }
        },
        _ => {
            return Err(AcquireError::BadOsList {
                url: base.to_string(),
                reason: "expected an object with \"os_list\" or an array".into(),
            });
        }
    };
    walk_items(fetch, base, items, category, depth, seen, out)
}

fn walk_items(
    fetch: &Fetch<'_>,
    base: &Url,
    items: &[Value],
    category: &[String],
    depth: usize,
    seen: &mut HashSet<String>,
    out: &mut Vec<OsEntry>,
) -> Result<(), AcquireError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for item in items {
        let Value::Object(o) = item else {
            return Err(AcquireError::BadOsList {
                url: base.to_string(),
                reason: format!("an entry is not an object: {}", abbreviate(item)),
            });
        };
        let name = text(o, "name").unwrap_or_else(|| "(unnamed)".to_string());
        let mut inner = category.to_vec();
        inner.push(name.clone());
        if let Some(Value::Array(sub)) = o.get("subitems") {
            walk_items(fetch, base, sub, &inner, depth + 1, seen, out)?;
            continue;
        }
        if let Some(sub_url) = text(o, "subitems_url") {
            let url = base.join(&sub_url).map_err(|e| AcquireError::BadOsList {
                url: base.to_string(),
                reason: format!("bad subitems_url {sub_url:?}: {e}"),
            })?;
            if seen.insert(url.to_string()) {
                let doc = fetch(&url)?;
                walk_document(fetch, &url, &doc, &inner, depth + 1, seen, out)?;
            }
            continue;
        }
        let Some(url) = text(o, "url") else {
            // "Erase", "Use custom" and similar entries have no image.
            continue;
        };
        let (short_name, suite) = short_name(&url, &name, text(o, "architecture").as_deref());
        out.push(OsEntry {
            name,
            short_name,
            suite,
            url: Some(
                base.join(&url)
                    .map(|u| u.to_string())
                    .unwrap_or(url.clone()),
            ),
            release_date: text(o, "release_date"),
            extract_size: number(o, "extract_size"),
            extract_sha256: text(o, "extract_sha256"),
            image_download_size: number(o, "image_download_size"),
            image_download_sha256: text(o, "image_download_sha256"),
            init_format: text(o, "init_format").unwrap_or_default(),
            category: category.to_vec(),
            depth,
            order: out.len(),
        });
    }
    Ok(())
}

fn abbreviate(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..s.floor_char_boundary_compat(60)])
    } else {
        s
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn text(o: &Map<String, Value>, k: &str) -> Option<String> {
    match o.get(k)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

fn number(o: &Map<String, Value>, k: &str) -> Option<u64> {
    match o.get(k)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `lite-arm64` and the suite from a file name like `2025-11-24-raspios-trixie-arm64-lite.img.xz`;
/// falls back on the entry's name and `architecture` for other names.
fn short_name(url: &str, name: &str, arch_field: Option<&str>) -> (Option<String>, Option<String>) {
    let file = url.rsplit('/').next().unwrap_or(url);
    let stem = file
        .split(".img")
        .next()
        .unwrap_or(file)
        .to_ascii_lowercase();
    if let Some((_, rest)) = stem.split_once("-raspios-") {
        let parts: Vec<&str> = rest.split('-').collect();
        if let Some(pos) = parts.iter().position(|p| *p == "arm64" || *p == "armhf") {
            let variant = match parts.get(pos + 1) {
                Some(&"lite") => "lite",
                Some(&"full") => "full",
                _ => "desktop",
            };
            let suite = (pos > 0).then(|| parts[..pos].join("-"));
            return (Some(format!("{variant}-{}", parts[pos])), suite);
        }
    }
    let lname = name.to_ascii_lowercase();
    if !lname.contains("raspberry pi os") {
        return (None, None);
    }
    let arch = match arch_field {
        Some(a) if a == "arm64" || a == "armhf" => a,
        _ if lname.contains("64-bit") => "arm64",
        _ if lname.contains("32-bit") => "armhf",
        _ => return (None, None),
    };
    let variant = if lname.contains("lite") {
        "lite"
    } else if lname.contains("full") {
        "full"
    } else {
        "desktop"
    };
    (Some(format!("{variant}-{arch}")), None)
}

impl OsEntry {
    fn matches(&self, wanted: &str) -> bool {
        let w = wanted.to_ascii_lowercase();
        if self.name.eq_ignore_ascii_case(wanted) {
            return true;
        }
        match &self.short_name {
            Some(short) => {
                short == &w
                    || self
                        .suite
                        .as_ref()
                        .is_some_and(|s| format!("{s}-{short}") == w)
            }
            None => false,
        }
    }
}

/// Choose the entry `sel` names: among matching entries (short name, `suite-short name`, or exact
/// name), the one with the requested release date, or the newest; ties go to the entry listed
/// shallower and earlier (the list's own recommendation).
pub fn select<'a>(
    entries: &'a [OsEntry],
    sel: &OsSelector,
    list_url: &str,
) -> Result<&'a OsEntry, AcquireError> {
    let matching: Vec<&OsEntry> = entries.iter().filter(|e| e.matches(&sel.name)).collect();
    if matching.is_empty() {
        let mut choices: Vec<String> = entries
            .iter()
            .filter_map(|e| e.short_name.clone())
            .collect();
        choices.sort();
        choices.dedup();
        return Err(AcquireError::UnknownOs {
            name: sel.name.clone(),
            list: list_url.to_string(),
            choices,
        });
    }
    let candidates: Vec<&OsEntry> = match &sel.release_date {
        Some(d) => matching
            .iter()
            .copied()
            .filter(|e| e.release_date.as_deref() == Some(d.as_str()))
            .collect(),
        None => matching.clone(),
    };
    let best = candidates.into_iter().min_by(|a, b| {
        b.release_date
            .cmp(&a.release_date)
            .then(a.depth.cmp(&b.depth))
            .then(a.order.cmp(&b.order))
    });
    best.ok_or_else(|| {
        let mut available: Vec<String> = matching
            .iter()
            .filter_map(|e| e.release_date.clone())
            .collect();
        available.sort();
        available.dedup();
        AcquireError::NoSuchRelease {
            name: sel.name.clone(),
            date: sel.release_date.clone().unwrap_or_default(),
            available,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_from_file_names() {
        let s = |u| short_name(u, "x", None);
        assert_eq!(
            s("https://h/2025-11-24-raspios-trixie-arm64-lite.img.xz"),
            (Some("lite-arm64".into()), Some("trixie".into()))
        );
        assert_eq!(
            s("https://h/2024-11-19-raspios-bookworm-armhf.img.xz")
                .0
                .as_deref(),
            Some("desktop-armhf")
        );
        assert_eq!(
            s("https://h/2025-11-24-raspios-trixie-arm64-full.img.xz")
                .0
                .as_deref(),
            Some("full-arm64")
        );
        assert_eq!(
            short_name("https://h/x.zip", "Raspberry Pi OS Lite (32-bit)", None)
                .0
                .as_deref(),
            Some("lite-armhf")
        );
        assert_eq!(
            short_name("https://h/ubuntu.img.xz", "Ubuntu", None).0,
            None
        );
    }

    fn entry(short: &str, date: &str, depth: usize, order: usize) -> OsEntry {
        OsEntry {
            name: format!("{short} {date}"),
            short_name: Some(short.into()),
            suite: Some("trixie".into()),
            url: Some("u".into()),
            release_date: Some(date.into()),
            extract_size: None,
            extract_sha256: None,
            image_download_size: None,
            image_download_sha256: None,
            init_format: String::new(),
            category: vec![],
            depth,
            order,
        }
    }

    #[test]
    fn selects_newest_then_shallowest() {
        let list = vec![
            entry("lite-arm64", "2025-11-24", 0, 0),
            entry("lite-arm64", "2025-11-24", 1, 1),
            entry("lite-arm64", "2024-07-04", 1, 2),
            entry("lite-armhf", "2025-12-01", 0, 3),
        ];
        let sel = |n: &str, d: Option<&str>| OsSelector {
            name: n.into(),
            release_date: d.map(Into::into),
        };
        assert_eq!(
            select(&list, &sel("lite-arm64", None), "l").unwrap().order,
            0
        );
        assert_eq!(
            select(&list, &sel("lite-arm64", Some("2024-07-04")), "l")
                .unwrap()
                .order,
            2
        );
        assert_eq!(
            select(&list, &sel("trixie-lite-armhf", None), "l")
                .unwrap()
                .order,
            3
        );
        assert!(matches!(
            select(&list, &sel("lite-arm64", Some("2020-01-01")), "l"),
            Err(AcquireError::NoSuchRelease { .. })
        ));
        assert!(matches!(
            select(&list, &sel("nope", None), "l"),
            Err(AcquireError::UnknownOs { .. })
        ));
    }
}
