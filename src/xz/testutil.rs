//! What the xz tests share: disk-like sample bytes, and the xz CLI to make and check files.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::fs::File;

use super::error::XzError;
use super::index::XzIndex;

pub(crate) const BS: usize = 65536;

/// Bytes that look like a disk: zero runs, text, counters and noise, changing every 4 KiB.
pub(crate) fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let kind = rnd() % 4;
        for j in 0..4096usize {
            out.push(match kind {
                0 => 0,
                1 => b"the quick brown fox jumps over the lazy dog\n"[j % 44],
                2 => (j / 3) as u8,
                _ => rnd() as u8,
            });
        }
    }
    out.truncate(len);
    out
}

pub(crate) fn xz(args: &[&str], input: &Path) -> Vec<u8> {
    let out = Command::new("xz")
        .args(args)
        .arg("-c")
        .arg(input)
        .output()
        .expect("xz (xz-utils) must be installed");
    assert!(
        out.status.success(),
        "xz {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Compress `data` with the xz CLI and `args`; returns the .xz path.
pub(crate) fn compress(dir: &Path, name: &str, data: &[u8], args: &[&str]) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    std::fs::write(&raw, data).unwrap();
    let path = dir.join(format!("{name}.xz"));
    std::fs::write(&path, xz(args, &raw)).unwrap();
    path
}

/// (file offset, uncompressed offset, total size, uncompressed size) per block, per `xz -l`.
pub(crate) fn xz_list(path: &Path) -> Vec<(u64, u64, u64, u64)> {
    let out = Command::new("xz")
        .args(["--robot", "-lv"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("block\t"))
        .map(|l| {
            let f: Vec<u64> = l
                .split('\t')
                .skip(4)
                .take(4)
                .map(|v| v.parse().unwrap())
                .collect();
            (f[0], f[1], f[2], f[3])
        })
        .collect()
}

pub(crate) fn ours(index: &XzIndex) -> Vec<(u64, u64, u64, u64)> {
    index
        .blocks()
        .iter()
        .map(|b| {
            (
                b.file_offset,
                b.uncompressed_offset,
                b.total_size,
                b.uncompressed_size,
            )
        })
        .collect()
}

/// A six-block file with a partial last block, and what it decodes to per `xz -dc`.
pub(crate) fn six_blocks(dir: &Path, threads: &str) -> (PathBuf, Vec<u8>) {
    let data = sample(5 * BS + 12345, 7);
    let path = compress(dir, "six", &data, &[threads, "--block-size=65536", "-6"]);
    let decoded = xz(&["-dc"], &path);
    assert_eq!(decoded, data);
    (path, decoded)
}

pub(crate) fn index_of(path: &Path) -> Result<XzIndex, XzError> {
    XzIndex::read(&File::open(path).unwrap())
}
