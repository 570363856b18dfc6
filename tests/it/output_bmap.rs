//! Block maps: `bmaptool copy` reproduces the image from an `.img.xz` and its `.bmap`, the map
//! leaves out exactly the free blocks the filesystems vouch for, and pibake reads the map back.

use crate::output_common;

use std::ops::Range;
use std::path::Path;
use std::process::Command;

use output_common::{Layout, MIB, Shape, extract, make_image, run, scratch, sha256};
use pibake::disk::Image;
use pibake::fs::FileOps;
use pibake::fs::ext4::Ext4;
use pibake::output::{self, bmap};
use pibake::progress::Silent;

const EPOCH: i64 = 1_735_689_600;

fn within(ranges: &[Range<u64>], start: u64, len: u64) -> u64 {
    ranges
        .iter()
        .map(|r| r.end.min(start + len).saturating_sub(r.start.max(start)))
        .sum()
}

/// Byte offsets in `image` of 4 KiB blocks filled with `byte` (the deleted files' data).
fn blocks_of(image: &Path, byte: u8) -> Vec<u64> {
    let data = std::fs::read(image).unwrap();
    data.chunks(4096)
        .enumerate()
        .filter(|(_, c)| c.iter().all(|&b| b == byte))
        .map(|(i, _)| i as u64 * 4096)
        .collect()
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_start_matches(':').trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn check(layout: &Layout, dir: &Path, exact_ext4: bool) {
    let img = Image::open(&layout.image).unwrap();
    let (root_start, root_len) = layout.root;
    let (boot_start, boot_len) = layout.boot;

    // On the untouched base, the map's share of the ext4 partition is exactly its used blocks.
    let base_ranges = bmap::mapped_ranges(&img).unwrap();
    let part = dir.join("root.part");
    extract(&layout.image, root_start, root_len, &part);
    let dump = run("dumpe2fs", &["-h", part.to_str().unwrap()]);
    let used =
        (field(&dump, "Block count:") - field(&dump, "Free blocks:")) * field(&dump, "Block size:");
    let mapped_root = within(&base_ranges, root_start, root_len);
    if exact_ext4 {
        assert_eq!(mapped_root, used, "mapped ext4 bytes vs used blocks");
        let groups = run("dumpe2fs", &[part.to_str().unwrap()]);
        assert!(
            groups.contains("BLOCK_UNINIT"),
            "no BLOCK_UNINIT group to exercise"
        );
    } else {
        assert!(mapped_root >= used);
    }
    // Everything before the first partition is mapped; the deleted files' data is not.
    assert_eq!(within(&base_ranges, 0, boot_start), boot_start);
    let junk_boot = blocks_of(&layout.image, 0xa5);
    let junk_root = blocks_of(&layout.image, 0x5a);
    assert!(junk_boot.len() > 100 && junk_root.len() > 200);
    for b in junk_boot.iter().chain(&junk_root) {
        assert_eq!(
            within(&base_ranges, *b, 4096),
            0,
            "free block at {b} is mapped"
        );
    }
    assert!(within(&base_ranges, boot_start, boot_len) < boot_len / 2);

    // Change the root through the copy-on-write layer; the map follows the layer.
    let root = img.root().unwrap().clone();
    let mut fs = Ext4::open(img.region(&root, true).unwrap(), EPOCH).unwrap();
    let payload = output_common::content(9, 3 * MIB as usize);
    fs.write_file(
        "/etc/payload.bin",
        &payload,
        pibake::fs::Meta::root(0o644, EPOCH),
    )
    .unwrap();
    drop(fs);
    let ranges = bmap::mapped_ranges(&img).unwrap();
    assert!(within(&ranges, root_start, root_len) >= mapped_root + payload.len() as u64);

    let out = dir.join("out.img.xz");
    let written = output::write(&img.disk, &out, &Silent).unwrap();
    let raw = output::write(&img.disk, &dir.join("out.img"), &Silent).unwrap();
    let map_path = dir.join("out.img.xz.bmap");
    let map = bmap::write(&img.disk, &ranges, &map_path, &Silent).unwrap();
    assert_eq!(map.sha256, sha256(&map_path));
    let mapped_bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    assert_eq!(map.mapped_blocks, mapped_bytes.div_ceil(4096));
    assert!(map.mapped_blocks < map.blocks / 2, "{map:?}");

    // bmaptool finds OUT.bmap beside the image, checks the file checksum and each range's.
    let copy = dir.join("copy.img");
    let o = Command::new("bmaptool")
        .arg("copy")
        .arg(&out)
        .arg(&copy)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bmaptool copy failed:\n{log}");
    assert!(log.contains("discovered bmap file"), "{log}");
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), written.raw_bytes);
    // Only the free blocks differ: the copy has zeros where the raw image has deleted data.
    assert_ne!(sha256(&copy), raw.sha256);
    let a = std::fs::read(&copy).unwrap();
    let b = std::fs::read(&raw.path).unwrap();
    for r in &ranges {
        assert!(a[r.start as usize..r.end as usize] == b[r.start as usize..r.end as usize]);
    }
    // And the copy is a sound disk with the same files.
    let copy_root = dir.join("copy.root");
    extract(&copy, root_start, root_len, &copy_root);
    common_e2fsck(&copy_root);
    let copy_boot = dir.join("copy.boot");
    extract(&copy, boot_start, boot_len, &copy_boot);
    let fsck = Command::new("fsck.vfat")
        .arg("-n")
        .arg(&copy_boot)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let got = dir.join("payload.got");
    run(
        "debugfs",
        &[
            "-R",
            &format!("dump /etc/payload.bin {}", got.display()),
            copy_root.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&got).unwrap() == payload);
    let kernel = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args([
            "-i",
            &format!("{}@@{boot_start}", copy.display()),
            "::kernel8.img",
        ])
        .output()
        .unwrap();
    assert!(kernel.stdout == output_common::content(2, 3 * MIB as usize));

    // pibake reads the map back, checks its checksum, and refuses it for another image.
    let back = bmap::read(&map_path, written.raw_bytes).unwrap();
    assert_eq!(
        back.ranges
            .iter()
            .map(|r| r.bytes.clone())
            .collect::<Vec<_>>(),
        ranges
    );
    assert!(back.ranges.iter().all(|r| r.sha256.is_some()));
    let err = bmap::read(&map_path, written.raw_bytes + 4096).unwrap_err();
    assert!(err.is_bad_input());
}

fn common_e2fsck(part: &Path) {
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(part)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "e2fsck -fn:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn bmaptool_reproduces_a_fat32_and_4k_ext4_image() {
    let dir = scratch("bmap4k");
    let layout = make_image(dir.path(), "base.img", Shape::default());
    check(&layout, dir.path(), true);
}

#[test]
fn bmaptool_reproduces_a_fat16_and_1k_ext4_image() {
    let dir = scratch("bmap1k");
    let shape = Shape {
        boot_mib: 24,
        root_mib: 32,
        ext4_block: 1024,
        blocks_per_group: 4096,
    };
    let layout = make_image(dir.path(), "base.img", shape);
    check(&layout, dir.path(), false);
}

#[test]
fn a_damaged_bmap_is_refused() {
    let dir = scratch("bmapbad");
    let layout = make_image(dir.path(), "base.img", Shape::default());
    let img = Image::open(&layout.image).unwrap();
    let ranges = bmap::mapped_ranges(&img).unwrap();
    let p = dir.path().join("x.bmap");
    bmap::write(&img.disk, &ranges, &p, &Silent).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        text.replacen("<Range chksum=\"", "<Range chksum=\"0", 1),
    )
    .unwrap();
    let err = bmap::read(&p, img.disk.len()).unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("checksum"),
        "{err}"
    );
    let err = bmap::read(&dir.path().join("missing.bmap"), 1).unwrap_err();
    assert!(err.is_bad_input());
}
