//! Small Raspberry Pi OS-shaped disk images for the output tests, made with the real tools
//! (sfdisk, mkfs.vfat, mtools, mkfs.ext4 -d, debugfs), deterministic and sparse.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

/// Layout of a test image.
#[derive(Clone, Copy)]
pub struct Shape {
    /// FAT partition size in MiB (FAT32 from 40 MiB with 512-byte clusters, FAT16 below).
    pub boot_mib: u64,
    /// ext4 partition size in MiB.
    pub root_mib: u64,
    /// ext4 block size.
    pub ext4_block: u32,
    /// Blocks per ext4 group (small values give many groups, some BLOCK_UNINIT).
    pub blocks_per_group: u32,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            boot_mib: 40,
            root_mib: 40,
            ext4_block: 4096,
            blocks_per_group: 1024,
        }
    }
}

/// Where each partition is, in bytes.
pub struct Layout {
    pub image: PathBuf,
    pub boot: (u64, u64),
    pub root: (u64, u64),
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C")
        .env("E2FSPROGS_FAKE_TIME", "1735689600")
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic bytes that compress somewhat (text-like runs mixed with noise).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(b"lorem ipsum dolor sit amet ");
        }
    }
    out.truncate(len);
    out
}

/// Build `dir/name`: MBR with a FAT boot partition at 4 MiB and an ext4 root after it, some files
/// in each, and one deleted file in each whose (non-zero) data is left in free space.
pub fn make_image(dir: &Path, name: &str, shape: Shape) -> Layout {
    let image = dir.join(name);
    let boot_start = 4 * MIB;
    let boot_len = shape.boot_mib * MIB;
    let root_start = boot_start + boot_len;
    let root_len = shape.root_mib * MIB;
    let total = root_start + root_len;
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(total).unwrap();
    drop(f);
    let table = format!(
        "label: dos\nlabel-id: 0x5452574b\nunit: sectors\n\nstart={}, size={}, type=c\nstart={}, size={}, type=83\n",
        boot_start / 512,
        boot_len / 512,
        root_start / 512,
        root_len / 512
    );
    let mut sfdisk = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(&image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(table.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let img = image.to_str().unwrap();

    // Boot: FAT32 with 512-byte clusters when big enough, else FAT16.
    let fat_bits = if shape.boot_mib >= 40 { "32" } else { "16" };
    run(
        "mkfs.vfat",
        &[
            "-F",
            fat_bits,
            "-s",
            "1",
            "-n",
            "bootfs",
            "-i",
            "12345678",
            "--offset",
            &(boot_start / 512).to_string(),
            img,
            &(boot_len / 1024).to_string(),
        ],
    );
    let staging = dir.join(format!("{name}.staging"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("boot")).unwrap();
    std::fs::write(staging.join("boot/config.txt"), content(1, 3000)).unwrap();
    std::fs::write(
        staging.join("boot/kernel8.img"),
        content(2, 3 * MIB as usize),
    )
    .unwrap();
    std::fs::write(staging.join("boot/junk.bin"), vec![0xa5; MIB as usize]).unwrap();
    let fat = format!("{img}@@{boot_start}");
    for f in ["config.txt", "kernel8.img", "junk.bin"] {
        run(
            "mcopy",
            &[
                "-m",
                "-i",
                &fat,
                staging.join("boot").join(f).to_str().unwrap(),
                &format!("::{f}"),
            ],
        );
    }
    run("mdel", &["-i", &fat, "::junk.bin"]);

    // Root: ext4 shaped like Raspberry Pi OS's, filled from a directory.
    let tree = staging.join("root");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("usr/lib")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "raspberrypi\n").unwrap();
    std::fs::write(tree.join("usr/lib/libbig.so"), content(3, 6 * MIB as usize)).unwrap();
    std::fs::write(tree.join("junk.bin"), vec![0x5a; 2 * MIB as usize]).unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "rootfs",
            "-O",
            "^64bit,^huge_file",
            "-b",
            &shape.ext4_block.to_string(),
            "-g",
            &shape.blocks_per_group.to_string(),
            "-I",
            "256",
            "-U",
            "11111111-2222-3333-4444-555555555555",
            "-E",
            &format!("offset={root_start},hash_seed=66666666-7777-8888-9999-000000000000"),
            "-d",
            tree.to_str().unwrap(),
            img,
            &format!("{}k", root_len / 1024),
        ],
    );
    // debugfs has no offset option: edit a copy of the partition and put it back.
    let part = dir.join(format!("{name}.root"));
    extract(&image, root_start, root_len, &part);
    run(
        "debugfs",
        &["-w", "-R", "rm /junk.bin", part.to_str().unwrap()],
    );
    put_back(&part, &image, root_start);
    std::fs::remove_file(&part).unwrap();
    std::fs::remove_dir_all(&staging).unwrap();
    Layout {
        image,
        boot: (boot_start, boot_len),
        root: (root_start, root_len),
    }
}

/// Copy `len` bytes at `offset` of `image` into a new sparse file.
pub fn extract(image: &Path, offset: u64, len: u64, out: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut src = std::fs::File::open(image).unwrap();
    src.seek(SeekFrom::Start(offset)).unwrap();
    let mut dst = std::fs::File::create(out).unwrap();
    dst.set_len(len).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        src.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(done)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        done += n as u64;
    }
}

/// Write all of `part` into `image` at `offset`.
pub fn put_back(part: &Path, image: &Path, offset: u64) {
    use std::io::{Seek, SeekFrom};
    let mut src = std::fs::File::open(part).unwrap();
    let mut dst = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    dst.seek(SeekFrom::Start(offset)).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
}

/// SHA-256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// A scratch directory under target/, removed on drop.
pub fn scratch(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-output");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)
        .unwrap()
}
