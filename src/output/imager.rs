//! An entry for Raspberry Pi Imager's OS list, so a baked image can be offered through a custom
//! repository (Imager: App Options → Content Repository → a JSON file or URL).
//!
//! The entry carries what Imager checks before and after writing: the download's size and
//! SHA-256, and the extracted image's size and SHA-256. The release date comes from the build's
//! epoch, never from the clock, so the entry is as reproducible as the image.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use super::{OutputError, Staged, Written};

/// What the entry says beyond the image's own numbers.
#[derive(Debug, Clone, Default)]
pub struct EntryInfo {
    /// Shown as the OS name in Imager.
    pub name: String,
    /// Shown under the name.
    pub description: String,
    /// Where Imager downloads the image; default: the output's file name, which Imager resolves
    /// relative to the repository JSON's own location.
    pub url: Option<String>,
    /// Icon URL (Imager's schema wants one; omitted when not given).
    pub icon: Option<String>,
    /// Imager's customisation mechanism: `""`, `systemd`, `cloudinit`, `cloudinit-rpi`,
    /// `rpi-preseed` or `none`. A baked image that is already configured usually wants `none`,
    /// so Imager does not offer to customise it a second time.
    pub init_format: String,
    /// Build time in seconds since 1970 (`SOURCE_DATE_EPOCH`); gives `release_date`.
    pub epoch: i64,
    /// Imager device tags (e.g. `pi5-64bit`); omitted when empty.
    pub devices: Vec<String>,
}

/// The `os_list` entry for `written` (an `.img`, `.img.xz` or `.img.zst` output).
pub fn entry(info: &EntryInfo, written: &Written) -> Value {
    let url = info.url.clone().unwrap_or_else(|| {
        written
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut e = json!({
        "name": info.name,
        "description": info.description,
        "url": url,
        "extract_size": written.raw_bytes,
        "extract_sha256": written.raw_sha256,
        "image_download_size": written.bytes,
        "image_download_sha256": written.sha256,
        "release_date": release_date(info.epoch),
        "init_format": info.init_format,
    });
    if let Some(icon) = &info.icon {
        e["icon"] = json!(icon);
    }
    if !info.devices.is_empty() {
        e["devices"] = json!(info.devices);
    }
    e
}

/// A whole repository file holding `entries`, as Imager loads it.
pub fn repository(entries: Vec<Value>) -> Value {
    json!({ "os_list": entries })
}

/// Write [`repository`]`(entries)` to `dest`, pretty-printed, under a temporary name first.
pub fn write(dest: &Path, entries: Vec<Value>) -> Result<(), OutputError> {
    let staged = Staged::new(dest)?;
    let mut text = serde_json::to_string_pretty(&repository(entries))
        .map_err(|e| staged.write_err(e.into()))?;
    text.push('\n');
    let mut file = staged.file()?;
    file.write_all(text.as_bytes())
        .map_err(|e| staged.write_err(e))?;
    staged.finish(file)
}

/// `YYYY-MM-DD` (UTC) of a time in seconds since 1970.
pub fn release_date(epoch: i64) -> String {
    // Civil date from a day count (Howard Hinnant's algorithm, proleptic Gregorian).
    let days = epoch.div_euclid(86_400) + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Format;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(release_date(0), "1970-01-01");
        assert_eq!(release_date(1_735_689_600), "2025-01-01");
        assert_eq!(release_date(1_709_164_800), "2024-02-29");
        assert_eq!(release_date(1_735_689_599), "2024-12-31");
    }

    #[test]
    fn the_entry_carries_both_sizes_and_hashes() {
        let w = Written {
            path: "out/master.img.xz".into(),
            format: Format::Xz,
            bytes: 10,
            sha256: "aa".into(),
            raw_bytes: 100,
            raw_sha256: Some("bb".into()),
        };
        let info = EntryInfo {
            name: "Cluster master".into(),
            description: "Baked by pibake".into(),
            init_format: "none".into(),
            epoch: 1_735_689_600,
            ..EntryInfo::default()
        };
        let e = entry(&info, &w);
        assert_eq!(e["url"], "master.img.xz");
        assert_eq!(e["extract_size"], 100);
        assert_eq!(e["extract_sha256"], "bb");
        assert_eq!(e["image_download_size"], 10);
        assert_eq!(e["image_download_sha256"], "aa");
        assert_eq!(e["release_date"], "2025-01-01");
        assert!(e.get("icon").is_none());
    }
}
