//! Hostile bases: images crafted (or damaged) so that their own structures point where they
//! must not. Each is refused with exit 2 and one clear sentence before anything is written,
//! the base unchanged; none makes pibake loop, write outside the partition it edits, or follow
//! a link out of the image.

use std::path::Path;

use crate::bad_input::build_of_refused;
use crate::common::{fixture, fixture_with_root, fixture_xz, root_dir, sh};

/// `debugfs -w` requests run on the bookworm root.
fn root_changed(dir: &Path, requests: &str) -> std::path::PathBuf {
    let cmd = format!("printf '{requests}' | debugfs -w -f - FS >/dev/null 2>&1");
    fixture_with_root("bookworm", dir, &cmd)
}

/// The first extent of `/etc/hostname` (i_block[5] holds its start block) moved far past the
/// end of the partition: reading or replacing the file would reach outside it.
#[test]
fn an_extent_pointing_past_the_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = root_changed(dir.path(), "sif /etc/hostname block[5] 0x7ffffff0\\n");
    build_of_refused(&base, dir.path(), "is damaged", Some("e2fsck"));
}

/// The same extent moved onto block 0, the superblock: replacing the file in place would
/// overwrite the filesystem's own metadata.
#[test]
fn an_extent_pointing_at_the_superblock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = root_changed(dir.path(), "sif /etc/hostname block[5] 0\\n");
    build_of_refused(&base, dir.path(), "is damaged", Some("e2fsck"));
}

/// `/etc/os-release` (read for the facts) as a symlink to itself.
#[test]
fn a_symlink_loop_is_refused_not_followed_forever() {
    let dir = tempfile::tempdir().unwrap();
    let base = root_changed(
        dir.path(),
        "rm /etc/os-release\\nsymlink /etc/os-release /etc/os-release\\n",
    );
    build_of_refused(&base, dir.path(), "too many levels of symbolic links", None);
}

/// `/etc/hostname` as a symlink climbing far above the root towards a host path: `..` stops at
/// the partition's root as in a chroot, so the link names a file inside the image, and nothing
/// on the host is touched.
#[test]
fn a_symlink_out_of_the_image_stays_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("escaped");
    let climb = "../".repeat(24);
    let base = root_changed(
        dir.path(),
        &format!(
            "rm /etc/hostname\\nsymlink /etc/hostname {climb}{}\\n",
            host.display()
        ),
    );
    build_of_refused(&base, dir.path(), "/etc/hostname", None);
    assert!(!host.exists(), "a link inside the image reached the host");
}

/// The root of the `/etc` htree claims seven levels of index (ext4 allows at most three): the
/// lookup must stop, not descend into whatever the bogus levels point at.
#[test]
fn an_htree_with_an_impossible_depth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // indirect_levels is byte 30 of the directory's first block (after the fake `.` and `..`
    // entries and four bytes of dx_root_info).
    let cmd = "b=$(debugfs -R 'bmap /etc 0' FS 2>/dev/null) && \
               printf '\\007' | dd of=FS bs=1 seek=$((b * 4096 + 30)) conv=notrunc status=none";
    let base = fixture_with_root("bookworm", dir.path(), cmd);
    build_of_refused(&base, dir.path(), "is damaged", Some("e2fsck"));
}

/// The root partition's MBR entry moved to start inside the boot partition: editing either
/// would write into the other.
#[test]
fn overlapping_partitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("overlap.img");
    sh(&format!(
        "cp --sparse=always {} {}",
        fixture("bookworm").display(),
        base.display()
    ));
    // Entry 2 is at byte 462; its start LBA at +8. Boot starts at 8192: put root at 16384.
    sh(&format!(
        "printf '\\000\\100\\000\\000' | dd of={} bs=1 seek=470 conv=notrunc status=none",
        base.display()
    ));
    build_of_refused(&base, dir.path(), "overlaps partition 1", None);
}

/// An `.xz` base whose index (with a correct CRC) claims one block decodes to 512 bytes more
/// than its header says: every offset after it would be wrong.
#[test]
fn an_xz_index_that_lies_about_sizes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("lie.img.xz");
    sh(&format!(
        "python3 {} {} {} 3 512 >/dev/null",
        root_dir().join("tests/fixtures/xz_index_lie.py").display(),
        fixture_xz("bookworm").display(),
        base.display()
    ));
    build_of_refused(&base, dir.path(), "xz block 3", None);
}

/// The boot partition's `cmdline.txt` entry names cluster 1, before the data area: fatfs
/// underflows turning it into a sector. That is a refusal of the partition, and the user sees
/// the refusal, not the driver's panic.
#[test]
fn a_fat_entry_naming_a_cluster_before_the_data_area_is_refused_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("fat.img");
    sh(&format!(
        "cp --sparse=always {} {}",
        fixture("bookworm").display(),
        base.display()
    ));
    // Find the root directory entry and set its first cluster (high word at +20, low at +26).
    let boot_at = crate::common::part(&crate::common::expect("bookworm"), 1).0;
    let bytes = std::fs::read(&base).unwrap();
    let area = &bytes[boot_at as usize..boot_at as usize + (8 << 20)];
    let entry = boot_at as usize
        + area
            .windows(11)
            .position(|w| w == b"CMDLINE TXT")
            .expect("cmdline.txt's directory entry");
    drop(bytes);
    sh(&format!(
        "printf '\\000\\000' | dd of={f} bs=1 seek={} conv=notrunc status=none && \
         printf '\\001\\000' | dd of={f} bs=1 seek={} conv=notrunc status=none",
        entry + 20,
        entry + 26,
        f = base.display()
    ));
    build_of_refused(&base, dir.path(), "boot partition is not a valid FAT", None);
    let o = crate::common::pibake_in(&dir.path().join("cache"))
        .args(["inspect", base.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}
