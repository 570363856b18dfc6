//! Every kind of bad image is refused with a one-line error naming the problem, exit code 2, and
//! nothing written: not the input, not a temporary file.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Run `pibake inspect` on `image` with a private TMPDIR; check exit 2, a one-line error that
/// contains `needle`, the input unchanged, and no temporary file left behind.
fn refused(image: &Path, needle: &str) {
    let before = image.exists().then(|| sha256(image));
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["--quiet", "inspect", image.to_str().unwrap()])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {needle:?}; stderr: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(
        image.exists().then(|| sha256(image)),
        before,
        "the input was modified"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[test]
fn not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.img");
    std::fs::write(&p, "these are my notes, not a disk image\n".repeat(100)).unwrap();
    refused(&p, "no partition table");
    let tiny = dir.path().join("tiny.img");
    std::fs::write(&tiny, b"x").unwrap();
    refused(&tiny, "too small");
}

#[test]
fn missing_file() {
    refused(
        Path::new("/nonexistent/raspios.img"),
        "cannot read /nonexistent/raspios.img",
    );
}

#[test]
fn truncated_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.img");
    sh(&format!(
        "cp --sparse=always {} {}",
        fixture("bookworm").display(),
        p.display()
    ));
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    refused(&p, "ends at byte");
}

#[test]
fn partition_table_pointing_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("past.img");
    std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
    sh(&format!(
        "printf 'label: dos\\nstart=2048, size=4096, type=c\\nstart=8192, size=4096, type=83\\n' | sfdisk -q --no-reread --force {} >/dev/null 2>&1",
        p.display()
    ));
    // sfdisk refuses impossible sizes, so grow partition 2 by editing its MBR entry directly.
    let mut raw = std::fs::read(&p).unwrap();
    let entry = 446 + 16;
    raw[entry + 12..entry + 16].copy_from_slice(&1_000_000u32.to_le_bytes());
    std::fs::write(&p, raw).unwrap();
    refused(&p, "partition 2 ends at byte");
}

#[test]
fn second_partition_not_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fatfat.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    sh(&format!(
        "printf 'label: dos\\nstart=2048, size=65536, type=c\\nstart=67584, type=83\\n' | sfdisk -q {0} >/dev/null && mkfs.vfat --offset=2048 -F 32 -s 1 {0} 65536 >/dev/null && mkfs.vfat --offset=67584 -F 16 {0} >/dev/null 2>&1 || true",
        p.display()
    ));
    refused(&p, "partition 2 holds");
}

#[test]
fn gpt_image_without_raspberry_pi_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gpt.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    sh(&format!(
        "printf 'label: gpt\\nstart=2048, size=8192, type=L\\n' | sfdisk -q {} >/dev/null",
        p.display()
    ));
    refused(&p, "no ext4 root filesystem");
}

#[test]
fn unknown_compression() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("raspios.img.bz2");
    std::fs::write(&p, b"BZh91AY&SY\x00\x00\x00\x00 and then some").unwrap();
    refused(&p, "unsupported compression: bzip2");
    let lying = dir.path().join("raspios.img.xz");
    std::fs::write(&lying, [0u8; 4096]).unwrap();
    refused(&lying, "does not start with xz data");
}

#[test]
fn corrupt_xz_names_where_it_broke() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("raspios.img.xz");
    sh(&format!(
        "xz -T0 -1 -c {} | head -c 300000 > {}",
        fixture("bookworm").display(),
        p.display()
    ));
    // The index at the end is read first, so a cut-short file is named as such at once.
    refused(&p, "truncated");
}

#[test]
fn bad_target_syntax_for_ls_and_cat() {
    let img = fixture("bookworm");
    for args in [["cat", "etc/os-release"], ["ls", "home:/"]] {
        let out = pibake(&[args[0], img.to_str().unwrap(), args[1]]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("expected PART:PATH"));
    }
    let out = pibake(&["cat", img.to_str().unwrap(), "root:/etc/no-such-file"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/etc/no-such-file: no such file or directory")
    );
    let out = pibake(&["cat", img.to_str().unwrap(), "root:/etc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
}

#[test]
fn a_bad_source_date_epoch_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.toml");
    std::fs::write(&r, "[node]\nhostname = \"x\"\n").unwrap();
    let out = Command::new(bin())
        .args(["--quiet", "plan", r.to_str().unwrap(), "--base"])
        .arg(fixture("bookworm"))
        .env("SOURCE_DATE_EPOCH", "soon")
        .env("PIBAKE_CACHE_DIR", test_cache())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err,
        "error: SOURCE_DATE_EPOCH=\"soon\" is not a number of seconds\n"
    );
}

/// A copy of the bookworm fixture with its root partition changed by `make_root` (a shell
/// command; `FS` names the partition's file) must be refused by `pibake build` as
/// [`build_of_refused`] says.
fn build_refused(make_root: &str, needle: &str, hint: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture_with_root("bookworm", dir.path(), make_root);
    build_of_refused(&base, dir.path(), needle, hint);
}

/// `pibake build` on `base` must be refused with exit 2, an `error:` line containing `needle`
/// and no debug text, a `hint:` when `hint` is given, no output, and the base unchanged.
pub(crate) fn build_of_refused(base: &Path, dir: &Path, needle: &str, hint: Option<&str>) {
    let before = sha256(base);
    let out = dir.join("out.img");
    let o = pibake_in(&dir.join("cache"))
        .arg("build")
        .arg(write_recipe(dir, &minimal_recipe("refused")))
        .arg("--base")
        .arg(base)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let error = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error: line in {err}"));
    assert!(error.contains(needle), "expected {needle:?} in: {err}");
    assert!(!error.contains('{'), "no debug text: {err}");
    if let Some(h) = hint {
        assert!(
            err.lines()
                .any(|l| l.starts_with("hint: ") && l.contains(h)),
            "expected a hint with {h:?} in: {err}"
        );
    }
    assert!(!out.exists(), "a refused build writes no output");
    assert_eq!(sha256(base), before, "the base was modified");
}

/// Found by a user: an ext3 root passed the feature gate and failed at the first write with the
/// driver's "legacy (non-extent)" text and exit 1.
#[test]
fn an_ext3_root_is_refused_before_any_write() {
    build_refused(
        "mkfs.ext3 -q -F -L rootfs FS",
        "pibake writes ext4 with extents only",
        None,
    );
}

/// Found by a user: a damaged group descriptor came out as `BadChecksum { .. }` with exit 1.
/// The first group descriptor (block 1 of a 4 KiB-block filesystem) gets one byte flipped.
#[test]
fn a_damaged_root_filesystem_is_bad_input_with_a_hint() {
    build_refused(
        "printf '\\377' | dd of=FS bs=1 seek=4100 conv=notrunc status=none",
        "ext4 filesystem is damaged",
        Some("e2fsck"),
    );
}
