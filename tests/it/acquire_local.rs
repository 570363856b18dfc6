//! Local bases: raw images used in place, compressed ones decoded once into the cache, zip
//! archives, damaged inputs, and the cache commands' library side.

use crate::common_http;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common_http::{image, options, sha, xz};
use pibake::acquire::cache::Cache;
use pibake::acquire::{self, AcquireError, VerifyMethod};
use pibake::compress::DecodeError;
use pibake::progress::Silent;

fn opts(cache: &Path) -> acquire::AcquireOptions {
    options(cache, "/nonexistent/os_list.json".into())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| rd.count())
}

#[test]
fn raw_image_is_used_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let raw = image(2 << 20, 1);
    let p = dir.path().join("base.img");
    std::fs::write(&p, &raw).unwrap();
    let a = acquire::resolve(p.to_str().unwrap(), &opts(cache.path()), &Silent).unwrap();
    assert_eq!(a.image, p);
    assert_eq!(a.image_sha256, sha(&raw));
    assert_eq!(a.verification.method, VerifyMethod::LocalUnchecked);
    assert_eq!(count(&cache.path().join("images")), 0);
    assert_eq!(std::fs::read(&p).unwrap(), raw);
    // --sha256 is checked against a raw file too; a mismatch leaves the file alone.
    let mut o = opts(cache.path());
    o.sha256 = Some(sha(b"other"));
    let e = acquire::resolve(p.to_str().unwrap(), &o, &Silent).unwrap_err();
    assert!(
        matches!(e, AcquireError::LocalChecksumMismatch { .. }),
        "{e}"
    );
    assert!(e.is_bad_input());
    assert!(p.exists());
    o.sha256 = Some(sha(&raw));
    let a = acquire::resolve(p.to_str().unwrap(), &o, &Silent).unwrap();
    assert_eq!(a.verification.method, VerifyMethod::Sha256Option);
    assert!(a.verification.image_sha256_checked);
}

#[test]
fn compressed_file_is_decoded_once_into_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let raw = image(3 << 20, 2);
    let z = xz(&raw);
    let p = dir.path().join("base.img.xz");
    std::fs::write(&p, &z).unwrap();
    let a = acquire::resolve(p.to_str().unwrap(), &opts(cache.path()), &Silent).unwrap();
    assert!(!a.from_cache);
    assert!(a.image.starts_with(cache.path().join("images")));
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    assert_eq!(a.compressed_sha256.as_deref(), Some(sha(&z).as_str()));
    assert!(
        std::fs::metadata(&a.image)
            .unwrap()
            .permissions()
            .readonly()
    );
    let b = acquire::resolve(p.to_str().unwrap(), &opts(cache.path()), &Silent).unwrap();
    assert!(b.from_cache);
    assert_eq!(b.image, a.image);
    assert_eq!(count(&cache.path().join("tmp")), 0);
}

#[test]
fn gzip_zstd_and_zip_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let raw = image(1 << 20, 3);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let cases = [
        ("a.img.gz", gz.finish().unwrap()),
        ("a.img.zst", zstd::encode_all(&raw[..], 1).unwrap()),
        (
            "a.zip",
            zip_of(&[("readme.txt", b"hi".as_slice()), ("a.img", &raw)]),
        ),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let a = acquire::resolve(p.to_str().unwrap(), &opts(cache.path()), &Silent)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(std::fs::read(&a.image).unwrap(), raw, "{name}");
    }
}

#[test]
fn zip_without_exactly_one_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.zip");
    std::fs::write(&none, zip_of(&[("readme.txt", b"hi".as_slice())])).unwrap();
    let e = acquire::resolve(none.to_str().unwrap(), &opts(cache.path()), &Silent).unwrap_err();
    assert!(
        matches!(&e, AcquireError::Decode { source: DecodeError::ZipImageCount { images, .. }, .. } if images.is_empty()),
        "{e}"
    );
    assert!(e.to_string().contains("readme.txt"), "{e}");
    assert!(e.is_bad_input());

    let two = dir.path().join("two.zip");
    std::fs::write(
        &two,
        zip_of(&[("a.img", b"1".as_slice()), ("b.img", b"2".as_slice())]),
    )
    .unwrap();
    let e = acquire::resolve(two.to_str().unwrap(), &opts(cache.path()), &Silent).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("a.img") && msg.contains("b.img") && msg.contains('2'),
        "{msg}"
    );
    assert!(e.is_bad_input());
    assert_eq!(count(&cache.path().join("images")), 0);
    assert_eq!(count(&cache.path().join("tmp")), 0);
}

#[test]
fn truncated_or_corrupt_xz_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let raw = image(4 << 20, 4);
    let z = xz(&raw);
    let cut = dir.path().join("cut.img.xz");
    std::fs::write(&cut, &z[..z.len() * 2 / 3]).unwrap();
    let e = acquire::resolve(cut.to_str().unwrap(), &opts(cache.path()), &Silent).unwrap_err();
    match &e {
        AcquireError::Decode {
            source: DecodeError::Corrupt { format: "xz", .. },
            ..
        } => {}
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("offset"), "{e}");
    assert!(e.is_bad_input());

    let mut bad = z.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let p = dir.path().join("bad.img.xz");
    std::fs::write(&p, &bad).unwrap();
    let e = acquire::resolve(p.to_str().unwrap(), &opts(cache.path()), &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::Decode { .. }), "{e}");
    assert!(e.is_bad_input());
    assert_eq!(count(&cache.path().join("images")), 0);
    assert_eq!(count(&cache.path().join("tmp")), 0);
}

#[test]
fn missing_file_is_bad_input() {
    let cache = tempfile::tempdir().unwrap();
    let e = acquire::resolve("/nonexistent/base.img.xz", &opts(cache.path()), &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::Local { .. }), "{e}");
    assert!(e.is_bad_input());
}

#[test]
fn cache_lists_and_cleans() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let p = dir.path().join("base.img.xz");
    std::fs::write(&p, xz(&image(1 << 20, 5))).unwrap();
    acquire::resolve(p.to_str().unwrap(), &opts(cache.path()), &Silent).unwrap();
    let c = Cache::open_exclusive(cache.path(), &Silent).unwrap();
    let list = c.list();
    assert_eq!(
        list.iter().filter(|e| e.kind == "image").count(),
        1,
        "{list:?}"
    );
    let kept = c.clean(Some(Duration::from_secs(86400))).unwrap();
    assert_eq!(kept.removed, 0);
    let r = c.clean(None).unwrap();
    assert!(r.removed >= 2, "{r:?}");
    assert!(c.list().is_empty());
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file(*name, o).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}
