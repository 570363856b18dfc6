//! `.img.xz` written from an `.img.xz` base by compressing only the blocks that changed, judged
//! by the system's `xz`: the output tests clean, decodes to the base with the edits applied, keeps
//! every base block boundary and the check type, carries untouched blocks over byte for byte, is
//! the same on every run and whether its pieces were compressed by it or by an earlier build that
//! shared them, and a damaged block the edits touch fails the write without leaving a file.

use crate::common;
use crate::common::{ListedBlock, xz_list};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

use pibake::disk::xz::DEFAULT_CACHE_BLOCKS;
use pibake::disk::{CowDisk, XzDev, XzIndex};
use pibake::output::xz_patch::{Patched, Pieces, write_patched};
use pibake::progress::{Progress, Silent};

const MIB: u64 = 1 << 20;

fn xz(args: &[&str], path: &Path) -> Output {
    Command::new("xz")
        .args(args)
        .arg(path)
        .output()
        .expect("xz (xz-utils) must be installed")
}

fn xz_ok(args: &[&str], path: &Path) -> Vec<u8> {
    let o = xz(args, path);
    assert!(
        o.status.success(),
        "xz {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Every base block boundary is one in the output, and the check type is the base's: the output
/// is the base with some blocks cut into smaller ones.
fn refines(base: &[ListedBlock], out: &[ListedBlock]) {
    let starts: Vec<u64> = out.iter().map(|b| b.uncompressed_offset).collect();
    for b in base {
        assert!(
            starts.contains(&b.uncompressed_offset),
            "base block at {} has no output block starting there: {starts:?}",
            b.uncompressed_offset
        );
    }
    let end = |v: &[ListedBlock]| {
        v.last()
            .map(|b| b.uncompressed_offset + b.uncompressed_size)
    };
    assert_eq!(end(base), end(out));
    for pair in out.windows(2) {
        assert_eq!(
            pair[0].uncompressed_offset + pair[0].uncompressed_size,
            pair[1].uncompressed_offset
        );
    }
    assert!(out.iter().all(|b| b.check == base[0].check), "check type");
}

/// The output block holding the same decoded range as `b`, if there is one.
fn same_range<'a>(b: &ListedBlock, out: &'a [ListedBlock]) -> Option<&'a ListedBlock> {
    out.iter().find(|o| {
        o.uncompressed_offset == b.uncompressed_offset && o.uncompressed_size == b.uncompressed_size
    })
}

/// The first MiBs of the bookworm fixture (MBR and the start of the FAT partition, some of it
/// incompressible), cut so the last block and the last chunk are partial, and that compressed
/// by `xz` into 1 MiB blocks. Compressed once for all the tests here.
fn fixture_head() -> &'static (Vec<u8>, Vec<u8>) {
    static HEAD: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    HEAD.get_or_init(|| {
        let len = 8 * MIB + 3 * 4096 + 1000;
        let mut raw = std::fs::read(common::fixture("bookworm")).unwrap();
        raw.truncate(len as usize);
        let dir = tempfile::tempdir().unwrap();
        let raw_path = dir.path().join("base.img");
        std::fs::write(&raw_path, &raw).unwrap();
        let compressed = xz_ok(&["-T0", "-6", "--block-size=1MiB", "-c"], &raw_path);
        (raw, compressed)
    })
}

/// The raw fixture head, and its `.xz` written into `dir` for this test to use (and damage).
fn base_in(dir: &Path) -> (Vec<u8>, PathBuf) {
    let (raw, compressed) = fixture_head();
    let path = dir.join("base.img.xz");
    std::fs::write(&path, compressed).unwrap();
    (raw.clone(), path)
}

/// Edits at `(offset, length)`, each byte flipped so it surely differs from the base.
fn apply(disk: &CowDisk, model: &mut [u8], edits: &[(u64, usize)]) {
    for &(at, n) in edits {
        let range = at as usize..at as usize + n;
        let bytes: Vec<u8> = model[range.clone()].iter().map(|b| b ^ 0xA5).collect();
        disk.write_at(at, &bytes).unwrap();
        model[range].copy_from_slice(&bytes);
    }
}

fn open(path: &Path, cache: usize) -> (Arc<XzDev>, CowDisk) {
    let dev = Arc::new(XzDev::open(path, cache).unwrap());
    let disk = CowDisk::new(dev.clone());
    (dev, disk)
}

fn index(path: &Path) -> XzIndex {
    XzIndex::read(&std::fs::File::open(path).unwrap()).unwrap()
}

/// Records the end of every block reported.
#[derive(Default)]
struct Steps(Mutex<Vec<u64>>);

impl Progress for Steps {
    fn begin(&self, _what: &str, _total: Option<u64>) {}
    fn set(&self, done: u64) {
        self.0.lock().unwrap().push(done);
    }
    fn end(&self) {}
}

fn no_partial_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().ends_with(".partial"),
            "left behind: {name:?}"
        );
    }
}

#[test]
fn only_touched_blocks_are_reencoded_and_xz_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (mut model, base_path) = base_in(dir.path());
    let len = model.len() as u64;
    let (base_blocks, base_streams) = xz_list(&base_path);
    assert_eq!(base_blocks.len(), 9);
    assert_eq!(base_streams, 1);

    let (dev, disk) = open(&base_path, 16);
    let edits = [
        (100, 5),                // block 0
        (MIB - 3, 10),           // across the 0/1 boundary
        (3 * MIB + 20480, 8192), // several chunks inside block 3
        (7 * MIB - 1, 2),        // across 6/7, in incompressible data
        (len - 1, 1),            // the very last byte, in the partial last block
    ];
    apply(&disk, &mut model, &edits);
    let touched = [0usize, 1, 3, 6, 7, 8];

    let out = dir.path().join("out.img.xz");
    let steps = Steps::default();
    let before = dev.blocks_decoded();
    let p: Patched = write_patched(&dev, &disk, &out, 2, None, &steps).unwrap();
    // Every touched block was already cached by the writes; the one fresh decode each is the
    // integrity check, and no untouched block was decoded at all.
    assert_eq!(dev.blocks_decoded() - before, touched.len() as u64);

    // The system's xz: tests clean, decodes to the base with the same edits.
    xz_ok(&["-t"], &out);
    assert!(
        xz_ok(&["-dc"], &out) == model,
        "xz -dc differs from the edited image"
    );

    // The base's boundaries and check, one stream; touched blocks cut into smaller ones.
    let (out_blocks, out_streams) = xz_list(&out);
    assert_eq!(out_streams, 1);
    refines(&base_blocks, &out_blocks);
    assert!(out_blocks.len() > base_blocks.len());
    assert_eq!(
        out_blocks
            .iter()
            .map(|b| (
                b.file_offset,
                b.uncompressed_offset,
                b.total_size,
                b.uncompressed_size
            ))
            .collect::<Vec<_>>(),
        index(&out)
            .blocks()
            .iter()
            .map(|b| (
                b.file_offset,
                b.uncompressed_offset,
                b.total_size,
                b.uncompressed_size
            ))
            .collect::<Vec<_>>(),
        "our index reader and xz -l disagree about the output"
    );

    // Untouched blocks are the base's bytes exactly.
    let base_bytes = std::fs::read(&base_path).unwrap();
    let out_bytes = std::fs::read(&out).unwrap();
    let mut copied = 0;
    for (i, b) in base_blocks.iter().enumerate() {
        if touched.contains(&i) {
            continue;
        }
        let o = same_range(b, &out_blocks).expect("an untouched block stays whole");
        assert!(
            b.bytes(&base_bytes) == o.bytes(&out_bytes),
            "untouched block {i} was not copied verbatim"
        );
        copied += b.total_size;
    }

    assert_eq!(p.base_blocks, 9);
    assert_eq!(p.blocks, out_blocks.len());
    assert_eq!(p.reencoded, touched.len());
    assert_eq!(p.reused, 0, "nothing to reuse without a shared Pieces");
    // Copied: the untouched blocks, plus any LZMA2 chunks kept inside the rebuilt ones.
    assert!(p.copied_bytes >= copied, "{} < {copied}", p.copied_bytes);
    assert_eq!(p.whole, 0, "xz's own blocks always have chunks to keep");
    assert_eq!(p.raw_bytes, len);
    assert_eq!(p.bytes, out_bytes.len() as u64);
    assert_eq!(p.sha256, common::sha256(&out));
    assert_eq!(p.path, out);
    let steps = steps.0.lock().unwrap().clone();
    let ends: Vec<u64> = base_blocks
        .iter()
        .map(|b| b.uncompressed_offset + b.uncompressed_size)
        .collect();
    assert_eq!(steps, ends, "progress once per block, in order");

    // Same inputs, other thread count: the same bytes.
    let again = dir.path().join("again.img.xz");
    let q = write_patched(&dev, &disk, &again, 1, None, &Silent).unwrap();
    assert_eq!(q.sha256, p.sha256);
    no_partial_files(dir.path());
}

#[test]
fn unchanged_content_is_copied_and_the_base_comes_back_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (model, base_path) = base_in(dir.path());
    let (dev, disk) = open(&base_path, DEFAULT_CACHE_BLOCKS);
    let untouched = dir.path().join("same.img.xz");
    let p = write_patched(&dev, &disk, &untouched, 2, None, &Silent).unwrap();
    assert_eq!(p.reencoded, 0);
    // A single-stream xz file's header, index and footer are determined by its blocks, so
    // copying every block reproduces the base file exactly.
    assert_eq!(p.sha256, common::sha256(&base_path));

    // Writing the bytes that were already there touches chunks but changes no block.
    disk.write_at(
        2 * MIB + 17,
        &model[2 * MIB as usize + 17..2 * MIB as usize + 5000],
    )
    .unwrap();
    assert!(!disk.changed_chunks().is_empty());
    let rewritten = dir.path().join("rewritten.img.xz");
    let q = write_patched(&dev, &disk, &rewritten, 2, None, &Silent).unwrap();
    assert_eq!(q.reencoded, 0);
    assert_eq!(q.sha256, p.sha256);
}

/// A copy of the base with one byte in the middle of block `i`'s compressed data changed.
fn damage(path: &Path, i: usize) {
    let idx = index(path);
    let b = idx.blocks()[i];
    let mut bytes = std::fs::read(path).unwrap();
    bytes[(b.file_offset + b.total_size / 2) as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damage_in_a_touched_block_fails_the_write_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut model, base_path) = base_in(dir.path());
    // A cache of one block, so block 5's decoded copy from the write below is gone by the time
    // the output is written.
    let (dev, disk) = open(&base_path, 1);
    apply(&disk, &mut model, &[(5 * MIB + 4096, 100)]);
    damage(&base_path, 5);
    let mut evict = [0u8; 1];
    dev.read_at(0, &mut evict).unwrap();

    let out = dir.path().join("out.img.xz");
    let e = write_patched(&dev, &disk, &out, 2, None, &Silent).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("xz block 5"), "{msg}");
    assert!(
        msg.contains(&format!("uncompressed offset {}", 5 * MIB)),
        "{msg}"
    );
    assert!(!out.exists(), "nothing may be left at the destination");
    no_partial_files(dir.path());
}

#[test]
fn damage_in_an_untouched_block_is_carried_over_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (mut model, base_path) = base_in(dir.path());
    let (dev, disk) = open(&base_path, 2);
    apply(&disk, &mut model, &[(100, 5)]);
    damage(&base_path, 4);
    let out = dir.path().join("out.img.xz");
    let p = write_patched(&dev, &disk, &out, 2, None, &Silent).unwrap();
    assert_eq!(p.reencoded, 1);
    // Documented trade-off: block 4 is copied undecoded, with its original check, so the
    // damage stays exactly as detectable as in the base.
    let (base_blocks, _) = xz_list(&base_path);
    let (out_blocks, _) = xz_list(&out);
    let out_bytes = std::fs::read(&out).unwrap();
    let base_bytes = std::fs::read(&base_path).unwrap();
    let o = same_range(&base_blocks[4], &out_blocks).unwrap();
    assert!(o.bytes(&out_bytes) == base_blocks[4].bytes(&base_bytes));
    assert!(!xz(&["-t"], &base_path).status.success());
    assert!(!xz(&["-t"], &out).status.success());
}

/// Compressible bytes with some noise, `len` long.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 4096) % 3 == 0 {
                x as u8
            } else {
                (i / 7) as u8
            }
        })
        .collect()
}

#[test]
fn other_checks_and_concatenated_streams_are_kept_as_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    for check in ["crc32", "sha256", "none"] {
        // Two streams with stream padding between them, as `cat a.xz b.xz` and friends make.
        let mut file = Vec::new();
        let mut model = Vec::new();
        for (k, len) in [(1u64, 200_000usize), (2, 150_001)] {
            let data = sample(len, k);
            let raw = dir.path().join(format!("part{k}.raw"));
            std::fs::write(&raw, &data).unwrap();
            file.extend(xz_ok(
                &["-T1", "--block-size=65536", "-C", check, "-c"],
                &raw,
            ));
            file.extend_from_slice(&[0; 4]);
            model.extend(data);
        }
        let base_path = dir.path().join(format!("{check}.xz"));
        std::fs::write(&base_path, &file).unwrap();
        let (base_blocks, base_streams) = xz_list(&base_path);
        assert_eq!(base_streams, 2);

        let (dev, disk) = open(&base_path, 2);
        apply(&disk, &mut model, &[(199_990, 20), (300_000, 1)]);
        let out = dir.path().join(format!("{check}.out.xz"));
        let p = write_patched(&dev, &disk, &out, 3, None, &Silent).unwrap();
        assert_eq!(p.reencoded, 3, "{check}: blocks 3, 4 and 5");
        if check != "none" {
            xz_ok(&["-t"], &out);
        }
        assert!(xz_ok(&["-dc"], &out) == model, "{check}: xz -dc differs");
        let (out_blocks, out_streams) = xz_list(&out);
        assert_eq!(out_streams, 1, "{check}");
        refines(&base_blocks, &out_blocks);
    }
}

#[test]
fn blocks_with_a_filter_before_lzma2_are_compressed_whole_and_still_decode_right() {
    // xz --x86 puts a BCJ filter before LZMA2: its chunks cannot be spliced (the decoded bytes
    // are not what LZMA2 saw), so such a touched block is compressed whole.
    let dir = tempfile::tempdir().unwrap();
    let mut model = sample(400_000, 9);
    let raw = dir.path().join("x86.raw");
    std::fs::write(&raw, &model).unwrap();
    let base_path = dir.path().join("x86.xz");
    std::fs::write(
        &base_path,
        xz_ok(
            &[
                "-T1",
                "--x86",
                "--lzma2=preset=6",
                "--block-size=131072",
                "-c",
            ],
            &raw,
        ),
    )
    .unwrap();
    let (dev, disk) = open(&base_path, 2);
    apply(&disk, &mut model, &[(140_000, 10)]);
    let out = dir.path().join("x86.out.xz");
    let p = write_patched(&dev, &disk, &out, 2, None, &Silent).unwrap();
    assert_eq!((p.reencoded, p.whole), (1, 1));
    xz_ok(&["-t"], &out);
    assert!(xz_ok(&["-dc"], &out) == model, "xz -dc differs");
    refines(&xz_list(&base_path).0, &xz_list(&out).0);
}

#[test]
fn builds_sharing_pieces_compress_what_they_have_in_common_once_and_write_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, base_path) = base_in(dir.path());
    let dev = Arc::new(XzDev::open(&base_path, 2).unwrap());
    let pieces = Pieces::default();
    // Two "nodes" editing the same places with different bytes, as a cluster's workers do.
    let edits = [
        (3 * MIB + 20480, 300),
        (3 * MIB + 700_000, 10),
        (5 * MIB + 9, 4),
    ];
    let mut written = Vec::new();
    for node in 0..2u8 {
        let disk = CowDisk::new(dev.clone());
        let mut model = raw.clone();
        for &(at, n) in &edits {
            let bytes: Vec<u8> = (0..n).map(|k| (k as u8) ^ node ^ 0x5A).collect();
            disk.write_at(at, &bytes).unwrap();
            model[at as usize..at as usize + n].copy_from_slice(&bytes);
        }
        let shared = dir.path().join(format!("shared{node}.img.xz"));
        let p = write_patched(&dev, &disk, &shared, 2, Some(&pieces), &Silent).unwrap();
        let alone = dir.path().join(format!("alone{node}.img.xz"));
        let q = write_patched(&dev, &disk, &alone, 2, None, &Silent).unwrap();
        assert_eq!(p.sha256, q.sha256, "node {node}: sharing changed the bytes");
        assert!(
            xz_ok(&["-dc"], &shared) == model,
            "node {node}: xz -dc differs"
        );
        xz_ok(&["-t"], &shared);
        written.push(p);
    }
    let (first, second) = (&written[0], &written[1]);
    assert_eq!(first.reused, 0);
    assert!(first.compressed_again > 0);
    // The second compresses only the pieces holding its own changes, and takes the rest.
    assert!(second.reused > 0, "{second:?}");
    assert!(
        second.compressed_again < first.compressed_again / 4,
        "{first:?} {second:?}"
    );
    assert_eq!(
        second.compressed_again + second.reused,
        first.compressed_again
    );
    assert!(
        second.compressed_again <= 3 * pibake::xz::FINE as u64,
        "{second:?}"
    );
}
