//! The OS list: nested subitems and subitems_url, selection, verification of both checksums,
//! and a second run that neither downloads nor decodes.

use crate::common_http;

use common_http::{Faults, Server, image, options, sha, xz};
use pibake::acquire::{self, AcquireError, Origin, VerifyMethod};
use pibake::progress::Silent;
use serde_json::json;

struct Fixture {
    server: Server,
    new_raw: Vec<u8>,
    old_raw: Vec<u8>,
    armhf_raw: Vec<u8>,
}

const NEW: &str = "/images/2025-11-24-raspios-trixie-arm64-lite.img.xz";
const OLD: &str = "/images/2024-07-04-raspios-bookworm-arm64-lite.img.xz";
const ARMHF: &str = "/images/2025-11-24-raspios-trixie-armhf-lite.img.xz";

fn entry(
    server: &Server,
    name: &str,
    path: &str,
    date: &str,
    raw: &[u8],
    z: &[u8],
) -> serde_json::Value {
    json!({
        "name": name,
        "description": "test",
        "icon": "x.png",
        "url": server.url(path),
        "extract_size": raw.len(),
        "extract_sha256": sha(raw),
        "image_download_size": z.len(),
        "image_download_sha256": sha(z),
        "release_date": date,
        "init_format": "cloudinit-rpi",
        "devices": ["pi5-64bit"],
    })
}

fn fixture() -> Fixture {
    let server = Server::start();
    let new_raw = image(3 << 20, 1);
    let old_raw = image(2 << 20, 2);
    let armhf_raw = image(1 << 20, 3);
    let (new_xz, old_xz, armhf_xz) = (xz(&new_raw), xz(&old_raw), xz(&armhf_raw));
    let top = json!({
        "imager": {"latest_version": "2.0.0"},
        "os_list": [
            entry(&server, "Raspberry Pi OS Lite (64-bit)", NEW, "2025-11-24", &new_raw, &new_xz),
            {"name": "Raspberry Pi OS (other)", "description": "more", "subitems_url": "/lists/other.json"},
            {"name": "Erase", "description": "format the card"},
            {"name": "Broken", "description": "x", "subitems": [
                {"name": "Raspberry Pi OS Lite (64-bit) broken", "description": "x",
                 "url": server.url("/images/2023-01-01-raspios-bullseye-arm64-lite.img.xz"),
                 "release_date": "2023-01-01", "extract_size": 5}
            ]},
        ]
    });
    let other = json!({
        "os_list": [
            entry(&server, "Raspberry Pi OS Lite (32-bit)", ARMHF, "2025-11-24", &armhf_raw, &armhf_xz),
            {"name": "Legacy", "description": "older", "subitems": [
                entry(&server, "Raspberry Pi OS (Legacy, 64-bit) Lite", OLD, "2024-07-04", &old_raw, &old_xz),
            ]},
        ]
    });
    server.put("/os_list.json", top.to_string().into_bytes());
    server.put("/lists/other.json", other.to_string().into_bytes());
    server.put(NEW, new_xz);
    server.put(OLD, old_xz);
    server.put(ARMHF, armhf_xz);
    Fixture {
        server,
        new_raw,
        old_raw,
        armhf_raw,
    }
}

#[test]
fn lists_nested_entries() {
    let f = fixture();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), f.server.url("/os_list.json"));
    let entries = acquire::os_list(&opts).unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Raspberry Pi OS Lite (64-bit)",
            "Raspberry Pi OS Lite (32-bit)",
            "Raspberry Pi OS (Legacy, 64-bit) Lite",
            "Raspberry Pi OS Lite (64-bit) broken",
        ]
    );
    assert_eq!(entries[1].short_name.as_deref(), Some("lite-armhf"));
    assert_eq!(entries[2].suite.as_deref(), Some("bookworm"));
    assert_eq!(entries[2].category, ["Raspberry Pi OS (other)", "Legacy"]);
    assert_eq!(entries[0].init_format, "cloudinit-rpi");
}

#[test]
fn default_is_newest_lite_arm64_and_second_run_is_free() {
    let f = fixture();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), f.server.url("/os_list.json"));
    let a = acquire::resolve("", &opts, &Silent).unwrap();
    assert_eq!(std::fs::read(&a.image).unwrap(), f.new_raw);
    assert!(a.image.starts_with(cache.path()));
    assert!(!a.from_cache);
    assert_eq!(a.verification.method, VerifyMethod::OsList);
    assert!(a.verification.download_sha256_checked && a.verification.image_sha256_checked);
    assert_eq!(a.image_sha256, sha(&f.new_raw));
    match &a.origin {
        Origin::OsList {
            release_date,
            short_name,
            ..
        } => {
            assert_eq!(release_date, "2025-11-24");
            assert_eq!(short_name.as_deref(), Some("lite-arm64"));
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(f.server.gets(NEW).len(), 1);

    let b = acquire::resolve("lite-arm64", &opts, &Silent).unwrap();
    assert!(b.from_cache);
    assert_eq!(b.image, a.image);
    assert_eq!(b.verification.method, VerifyMethod::OsList);
    assert_eq!(
        f.server.gets(NEW).len(),
        1,
        "the second run must not download"
    );

    // The cached image is still complete and has not been touched.
    assert_eq!(std::fs::read(&b.image).unwrap(), f.new_raw);
}

#[test]
fn selects_by_release_date_name_and_arch() {
    let f = fixture();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), f.server.url("/os_list.json"));
    let old = acquire::resolve("lite-arm64@2024-07-04", &opts, &Silent).unwrap();
    assert_eq!(std::fs::read(&old.image).unwrap(), f.old_raw);
    let armhf = acquire::resolve("Raspberry Pi OS Lite (32-bit)", &opts, &Silent).unwrap();
    assert_eq!(std::fs::read(&armhf.image).unwrap(), f.armhf_raw);
    let by_suite = acquire::resolve("bookworm-lite-arm64", &opts, &Silent).unwrap();
    assert_eq!(by_suite.image, old.image);

    let e = acquire::resolve("lite-arm64@2020-01-01", &opts, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::NoSuchRelease { .. }), "{e}");
    assert!(e.to_string().contains("2024-07-04"), "{e}");
    assert!(e.is_bad_input());
    let e = acquire::resolve("desktop-arm64", &opts, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::UnknownOs { .. }), "{e}");
    assert!(e.to_string().contains("lite-armhf"), "{e}");
}

#[test]
fn entry_missing_required_fields_is_refused() {
    let f = fixture();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), f.server.url("/os_list.json"));
    let e = acquire::resolve("Raspberry Pi OS Lite (64-bit) broken", &opts, &Silent).unwrap_err();
    assert!(
        matches!(
            e,
            AcquireError::IncompleteEntry {
                field: "image_download_sha256",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_bad_input());
}

#[test]
fn wrong_download_bytes_are_deleted_and_never_cached() {
    let f = fixture();
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), f.server.url("/os_list.json"));
    let body = std::fs::read(cache.path()).ok(); // (directory: None)
    assert!(body.is_none());
    let good = xz(&f.new_raw);
    f.server.put_with(
        NEW,
        good.clone(),
        Faults {
            corrupt: true,
            ..Faults::default()
        },
    );
    let e = acquire::resolve("lite-arm64", &opts, &Silent).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, AcquireError::ChecksumMismatch { .. }), "{msg}");
    assert!(msg.contains(&sha(&good)), "expected sha missing: {msg}");
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    assert!(msg.contains(&sha(&bad)), "actual sha missing: {msg}");
    assert!(e.is_bad_input());
    assert!(files_under(&cache.path().join("downloads")).is_empty());
    assert!(files_under(&cache.path().join("images")).is_empty());
    assert!(
        files_under(&cache.path().join("tmp")).is_empty(),
        "{:?}",
        files_under(&cache.path().join("tmp"))
    );

    // Once the server is fixed, the next run succeeds.
    f.server.set_faults(NEW, Faults::default());
    let a = acquire::resolve("lite-arm64", &opts, &Silent).unwrap();
    assert_eq!(std::fs::read(&a.image).unwrap(), f.new_raw);
}

#[test]
fn wrong_extract_sha256_is_refused() {
    let server = Server::start();
    let raw = image(1 << 20, 9);
    let z = xz(&raw);
    let mut e = entry(
        &server,
        "Raspberry Pi OS Lite (64-bit)",
        NEW,
        "2025-11-24",
        &raw,
        &z,
    );
    e["extract_sha256"] = json!(sha(b"something else"));
    server.put("/l.json", json!({"os_list": [e]}).to_string().into_bytes());
    server.put(NEW, z);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), server.url("/l.json"));
    let err = acquire::resolve("lite-arm64", &opts, &Silent).unwrap_err();
    assert!(
        matches!(err, AcquireError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("extract_sha256"), "{err}");
    assert!(files_under(&cache.path().join("images")).is_empty());
}

#[test]
fn os_list_that_is_not_json_is_bad_input() {
    let server = Server::start();
    server.put("/l.json", b"<html>".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), server.url("/l.json"));
    let e = acquire::resolve("lite-arm64", &opts, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::BadOsList { .. }), "{e}");
    assert!(e.is_bad_input());
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
