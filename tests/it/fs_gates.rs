//! Every safety gate of the filesystem layer: the error it gives, and proof that nothing was
//! written (the base's sha256 and an empty copy-on-write layer).

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use pibake::disk::Image;
use pibake::fs::ext4::Ext4;
use pibake::fs::fat::Fat;
use pibake::fs::{FileOps, FsError, Meta, path};

const CLOCK: i64 = 1_735_689_600;

/// A private copy of a fixture whose root partition went through `debugfs -w -R request`.
fn with_root_changed(release: &str, dir: &Path, request: &str) -> PathBuf {
    fixture_with_root(
        release,
        dir,
        &format!("debugfs -w -R '{request}' FS >/dev/null 2>&1"),
    )
}

fn open_root_rw(img: &Path) -> (Image, Result<Ext4, FsError>) {
    let image = Image::open(img).unwrap();
    let root = image.root().unwrap().clone();
    let fs = Ext4::open(image.region(&root, true).unwrap(), CLOCK);
    (image, fs)
}

#[test]
fn ext4_needing_journal_recovery_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = with_root_changed("bookworm", dir.path(), "feature needs_recovery");
    let before = sha256(&img);
    let (image, fs) = open_root_rw(&img);
    let err = fs.err().expect("refused");
    assert!(matches!(err, FsError::NeedsRecovery), "{err}");
    assert!(err.to_string().contains("journal needs recovery"));
    assert!(image.disk.changed_chunks().is_empty());
    assert_eq!(sha256(&img), before);
}

#[test]
fn ext4_marked_with_errors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = with_root_changed("trixie", dir.path(), "ssv state 3");
    let before = sha256(&img);
    let (image, fs) = open_root_rw(&img);
    let err = fs.err().expect("refused");
    assert!(matches!(err, FsError::HasErrors), "{err}");
    assert!(image.disk.changed_chunks().is_empty());
    assert_eq!(sha256(&img), before);
}

#[test]
fn ext4_with_features_pibake_cannot_write_is_refused_but_still_readable() {
    for (feature, name) in [
        ("inline_data", "inline_data"),
        ("quota", "quota"),
        ("casefold", "casefold"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let img = with_root_changed("bullseye", dir.path(), &format!("feature {feature}"));
        let before = sha256(&img);
        let (image, fs) = open_root_rw(&img);
        let err = fs.err().expect("refused");
        assert!(
            matches!(&err, FsError::UnsupportedFeatures(f) if f.contains(name)),
            "{feature}: {err}"
        );
        assert!(image.disk.changed_chunks().is_empty());
        assert_eq!(sha256(&img), before);
        if feature != "casefold" {
            // Reading does not need to understand them.
            let out = pibake(&["cat", img.to_str().unwrap(), "root:/etc/hostname"]);
            assert!(
                out.status.success(),
                "{feature}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn fat_with_an_invalid_boot_sector_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bad-fat.img");
    sh(&format!(
        "cp --sparse=always {} {}",
        fixture("bookworm").display(),
        img.display()
    ));
    let (off, _) = part(&expect("bookworm"), 1);
    // Bytes per sector = 0: a boot sector no FAT driver may trust.
    sh(&format!(
        "printf '\\000\\000' | dd of={} bs=1 seek={} conv=notrunc status=none",
        img.display(),
        off + 11
    ));
    let before = sha256(&img);
    let image = Image::open(&img).unwrap();
    let boot = image.boot().unwrap().clone();
    let err = Fat::open(image.region(&boot, true).unwrap(), CLOCK)
        .err()
        .expect("refused");
    assert!(matches!(err, FsError::BadFat(_)), "{err}");
    assert!(err.to_string().contains("not a valid FAT filesystem"));
    let out = pibake(&["cat", img.to_str().unwrap(), "boot:/cmdline.txt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid FAT filesystem"));
    assert!(image.disk.changed_chunks().is_empty());
    assert_eq!(sha256(&img), before);
}

/// Everything the copy-on-write layer holds, to show a refused edit changed nothing.
fn layer_digest(image: &Image) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; pibake::disk::cow::CHUNK];
    for c in image.disk.changed_chunks() {
        image.disk.read_at(c * buf.len() as u64, &mut buf).unwrap();
        h.update(c.to_le_bytes());
        h.update(&buf);
    }
    hex::encode(h.finalize())
}

#[test]
fn filling_the_root_filesystem_is_refused_without_a_trace_and_leaves_it_clean() {
    let img = fixture("bullseye");
    let before = sha256(&img);
    let (image, fs) = open_root_rw(&img);
    let mut fs = fs.unwrap();
    let chunk = vec![0x5a_u8; 32 << 20];
    let mut refused = None;
    for i in 0..1000 {
        let layer = layer_digest(&image);
        match fs.write_file(&format!("/var/fill-{i}"), &chunk, Meta::root(0o644, CLOCK)) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(
                    layer_digest(&image),
                    layer,
                    "a refused write changed blocks"
                );
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the filesystem never filled up");
    assert!(
        matches!(
            err,
            FsError::NoSpace {
                partition: "root",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("partition is full"));
    // A small file still fits, and the full filesystem is consistent.
    fs.write_file("/etc/after-full", b"ok\n", Meta::root(0o644, CLOCK))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("root.ext4");
    let region = image.region(image.root().unwrap(), false).unwrap();
    dump(&region, &out);
    assert_e2fsck_clean(&out);
    assert_eq!(debugfs_cat(&out, "/etc/after-full"), b"ok\n");
    assert_eq!(sha256(&img), before);
}

#[test]
fn filling_the_boot_filesystem_is_refused_without_a_trace() {
    let img = fixture("trixie");
    let image = Image::open(&img).unwrap();
    let boot = image.boot().unwrap().clone();
    let mut fs = Fat::open(image.region(&boot, true).unwrap(), CLOCK).unwrap();
    let free = fs.free_bytes().unwrap();
    let err = fs
        .write_file(
            "/huge.bin",
            &vec![1u8; free as usize + 4096],
            Meta::root(0o644, CLOCK),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            FsError::NoSpace {
                partition: "boot",
                ..
            }
        ),
        "{err}"
    );
    assert!(image.disk.changed_chunks().is_empty());
}

#[test]
fn a_failed_mutation_is_rolled_back_block_for_block() {
    // Replacing a file by a symlink unlinks the file first; when the symlink then cannot be made
    // the unlink must be undone too.
    let img = fixture("bookworm");
    let (image, fs) = open_root_rw(&img);
    let mut fs = fs.unwrap();
    fs.write_file("/etc/pb-victim", b"keep me\n", Meta::root(0o644, CLOCK))
        .unwrap();
    let layer = layer_digest(&image);
    let too_long = "x".repeat(5000);
    let err = fs
        .symlink("/etc/pb-victim", &too_long, Meta::root(0o777, CLOCK))
        .unwrap_err();
    assert!(matches!(err, FsError::InvalidPath { .. }), "{err}");
    assert_eq!(layer_digest(&image), layer);
    // The same undo that every failed call relies on, around real multi-block ext4 work: after
    // it the filesystem is block-for-block what it was, and still clean.
    image.disk.begin();
    for i in 0..50 {
        fs.write_file(
            &format!("/etc/pb-undo-{i}"),
            &vec![i as u8; 70_000],
            Meta::root(0o644, CLOCK),
        )
        .unwrap();
    }
    fs.remove("/etc/pb-victim").unwrap();
    image.disk.rollback();
    assert_eq!(layer_digest(&image), layer, "rollback left blocks changed");
    assert!(!fs.exists("/etc/pb-undo-0").unwrap());
    assert_eq!(fs.read("/etc/pb-victim").unwrap(), b"keep me\n");
}

#[test]
fn bad_paths_are_refused_before_anything_is_written() {
    let img = fixture("trixie");
    let (image, fs) = open_root_rw(&img);
    let mut fs = fs.unwrap();
    let m = Meta::root(0o644, CLOCK);
    type Check = fn(&FsError) -> bool;
    let cases: Vec<(&str, Check)> = vec![
        ("/../etc/passwd", |e| {
            matches!(e, FsError::InvalidPath { .. })
        }),
        ("/etc/../../x", |e| matches!(e, FsError::InvalidPath { .. })),
        ("etc/relative", |e| matches!(e, FsError::InvalidPath { .. })),
        ("/etc", |e| matches!(e, FsError::IsADirectory(_))),
        ("/etc/hostname/x", |e| {
            matches!(e, FsError::NotADirectory(_))
        }),
        ("/no/such/dir/file", |e| matches!(e, FsError::NotFound(_))),
        ("/", |e| matches!(e, FsError::InvalidPath { .. })),
    ];
    for (p, want) in cases {
        let err = fs.write_file(p, b"x", m).unwrap_err();
        assert!(want(&err), "{p}: {err}");
        assert!(err.is_bad_input(), "{p}");
    }
    assert!(matches!(
        path::from_bytes(b"/etc/\xffname"),
        Err(FsError::InvalidPath { .. })
    ));
    assert!(image.disk.changed_chunks().is_empty());
}

#[test]
fn symlinks_resolve_inside_the_partition_never_on_the_host() {
    let img = fixture("bookworm");
    let (image, fs) = open_root_rw(&img);
    let mut fs = fs.unwrap();
    let m = Meta::root(0o644, CLOCK);
    // Merged /usr: /lib -> usr/lib.
    fs.write_file("/lib/pibake-probe.conf", b"via /lib\n", m)
        .unwrap();
    // Absolute and over-climbing relative targets stay inside the image.
    fs.symlink("/pb-abs", "/etc", m).unwrap();
    fs.symlink("/etc/pb-rel", "../../../../../../etc", m)
        .unwrap();
    fs.write_file("/pb-abs/pb-through-abs", b"abs\n", m)
        .unwrap();
    fs.write_file("/etc/pb-rel/pb-through-rel", b"rel\n", m)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.img");
    pibake::output::raw::write(&image.disk, &out, &pibake::progress::Silent).unwrap();
    let (off, len) = part(&expect("bookworm"), 2);
    let fsimg = tmp.path().join("root.ext4");
    extract(&out, off, len, &fsimg);
    assert_e2fsck_clean(&fsimg);
    assert_eq!(
        debugfs_cat(&fsimg, "/usr/lib/pibake-probe.conf"),
        b"via /lib\n"
    );
    assert_eq!(debugfs_cat(&fsimg, "/etc/pb-through-abs"), b"abs\n");
    assert_eq!(debugfs_cat(&fsimg, "/etc/pb-through-rel"), b"rel\n");
    assert!(
        !Path::new("/etc/pb-through-abs").exists(),
        "wrote to the host"
    );
}
