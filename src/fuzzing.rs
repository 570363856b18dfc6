//! Fuzz targets: one function per parser of bytes pibake did not write (partition tables, `.xz`
//! framing and blocks, ext4 and FAT structures and drivers, the OS list, recipes, manifests,
//! bmaps, facts files, checksum sidecars, OpenPGP keys and signatures, overlay manifests).
//!
//! Each takes arbitrary bytes and must return without panicking, hanging or allocating by an
//! unchecked size field; errors are the expected outcome and are ignored. The bodies live here,
//! not in `fuzz/`, so the libFuzzer harness (nightly, `cargo fuzz`) and the stable replay of
//! the committed corpus in the test suite run exactly the same code.

use std::io::Write;
use std::sync::Arc;

use crate::disk::{BlockDev, CowDisk, Region};
use crate::fs::{FileOps, Meta, ReadAt};

/// A fuzz target: any bytes in, nothing out, no panic.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call it.
pub const TARGETS: &[(&str, Target)] = &[
    ("partition", partition),
    ("xz_index", xz_index),
    ("xz_block", xz_block),
    ("lzma2", lzma2),
    ("ext4_free", ext4_free),
    ("ext4_read", ext4_read),
    ("ext4_edit", ext4_edit),
    ("fat_free", fat_free),
    ("fat_read", fat_read),
    ("fat_edit", fat_edit),
    ("image", image),
    ("oslist", oslist),
    ("recipe", recipe),
    ("manifest", manifest),
    ("bmap", bmap),
    ("facts", facts),
    ("sidecar", sidecar),
    ("openpgp", openpgp),
    ("overlay", overlay),
];

/// For the libFuzzer harness of the targets that reach `fatfs`: let a panic inside it unwind
/// to the FAT wrapper's guard (a known, guarded dependency bug, see `fs::fat`), where the
/// harness's own hook would abort on it as on any other. Every other panic still aborts.
pub fn let_fatfs_panics_unwind() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info
            .location()
            .is_some_and(|l| l.file().contains("/fatfs-"))
        {
            return;
        }
        abort(info);
    }));
}

/// Largest device a disk target pretends to have: big enough for geometry that small inputs
/// cannot otherwise express, small enough that a driver walking every group stays quick.
const MAX_SPARSE: u64 = 1 << 30;

/// Input bytes followed by zeros up to a declared length: a large partition from a small input.
struct Sparse {
    bytes: Vec<u8>,
    len: u64,
}

impl Sparse {
    /// The first four bytes of `data` (little-endian) give the length in 512-byte sectors
    /// (capped at [`MAX_SPARSE`], never below the bytes given); the rest is the content.
    fn new(data: &[u8]) -> Self {
        let Some((head, bytes)) = data.split_first_chunk::<4>() else {
            return Self {
                bytes: data.to_vec(),
                len: data.len() as u64,
            };
        };
        let declared = (u64::from(u32::from_le_bytes(*head)) * 512).min(MAX_SPARSE);
        Self {
            bytes: bytes.to_vec(),
            len: declared.max(bytes.len() as u64),
        }
    }

    fn region(self, writable: bool) -> Option<Region> {
        let len = self.len;
        let disk = Arc::new(CowDisk::new(Arc::new(self)));
        Region::new(disk, 0, len, writable).ok()
    }
}

impl BlockDev for Sparse {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        crate::disk::device::check_bounds(offset, buf.len(), self.len)?;
        buf.fill(0);
        let have = self.bytes.len() as u64;
        if offset < have {
            let n = (have - offset).min(buf.len() as u64) as usize;
            let start = offset as usize;
            buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        }
        Ok(())
    }
}

impl ReadAt for Sparse {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        BlockDev::read_at(self, at, buf)
    }
}

/// Splits the input into pieces at `\0` bytes, for targets that take several texts.
fn pieces(data: &[u8]) -> impl Iterator<Item = String> + '_ {
    data.split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// Partition tables: MBR, GPT behind a protective MBR, and the probe of each partition.
pub fn partition(data: &[u8]) {
    if let Some(region) = Sparse::new(data).region(false) {
        let _ = crate::disk::partition::read(&region);
    }
}

/// A temporary file holding `data`, for the readers that take a file.
fn temp_file(data: &[u8]) -> Option<tempfile::NamedTempFile> {
    let mut f = tempfile::NamedTempFile::new().ok()?;
    f.write_all(data).ok()?;
    f.flush().ok()?;
    Some(f)
}

/// Blocks larger than this are not decoded by the index target: a lying index may claim up to
/// [`crate::xz::MAX_BLOCK`], which is allowed, and decoding it only tests liblzma's speed.
const FUZZ_BLOCK: u64 = 4 << 20;

/// An `.xz` file: stream footers, indexes and headers walked back from the end, then its
/// (small) blocks decoded through the index, and the random-access reader over it.
pub fn xz_index(data: &[u8]) {
    let Some(tmp) = temp_file(data) else { return };
    let Ok(index) = crate::xz::XzIndex::read(tmp.as_file()) else {
        return;
    };
    let _ = index.block_at(index.uncompressed_len() / 2);
    for (i, b) in index.blocks().iter().enumerate().take(8) {
        if b.uncompressed_size.max(b.total_size) <= FUZZ_BLOCK {
            let _ = crate::xz::decode_block(tmp.as_file(), &index, i);
        }
    }
    let Ok(reader) = crate::xz::XzReader::open(tmp.path(), 2) else {
        return;
    };
    if reader
        .index()
        .blocks()
        .iter()
        .any(|b| b.uncompressed_size.max(b.total_size) > FUZZ_BLOCK)
    {
        return;
    }
    let len = reader.len();
    for at in [0, len / 3, len.saturating_sub(100)] {
        let mut buf = vec![0u8; 100.min(len - at) as usize];
        let _ = reader.read_at(at, &mut buf);
    }
}

/// One block as stored (header to check) with the index's word on its sizes: liblzma's block
/// decoder behind pibake's checks, then the block cutter over the decoded bytes with an edit.
///
/// Layout: check ID, 3 bytes of uncompressed size (little-endian), 1 byte whose low two bits
/// are the padding the index implies, 1 byte placing an edit; the rest is the block.
pub fn xz_block(data: &[u8]) {
    let Some((head, raw)) = data.split_first_chunk::<6>() else {
        return;
    };
    let check = head[0] & 0x0f;
    let uncompressed_size = u64::from(u32::from_le_bytes([head[1], head[2], head[3], 0]));
    let padding = u64::from(head[4] & 3).min(raw.len() as u64);
    let block = crate::xz::XzBlock {
        file_offset: 12,
        total_size: raw.len() as u64,
        unpadded_size: raw.len() as u64 - padding,
        uncompressed_offset: 0,
        uncompressed_size,
    };
    let Ok(decoded) = crate::xz::decode_raw(raw, &block, 0, check) else {
        return;
    };
    let mut edited = decoded;
    if edited.is_empty() {
        return;
    }
    let at = usize::from(head[5]) * edited.len() / 256;
    edited[at] ^= 0x5a;
    let changed: Vec<std::ops::Range<usize>> = std::iter::once(at..at + 1).collect();
    let _ = crate::xz::layout(raw, check, &edited, &changed, false);
}

/// The LZMA2 chunk parser the block cutter uses to find what it can keep.
pub fn lzma2(data: &[u8]) {
    let _ = crate::xz::lzma2_chunks(data);
}

/// The ext4 free-space map: superblock layout, descriptors and block bitmaps, read directly.
pub fn ext4_free(data: &[u8]) {
    let dev = Sparse::new(data);
    if let Ok(Some(free)) = crate::fs::ext4::free::free_ranges(&dev) {
        assert!(
            free.iter()
                .all(|r| r.start < r.end && r.end <= ReadAt::len(&dev)),
            "free ranges must be non-empty and inside the partition"
        );
    }
}

/// The paths the drivers are asked about: the ones [`crate::facts::gather`] and edits use.
const PATHS: &[&str] = &[
    "/",
    "/etc",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/fstab",
    "/lib",
    "/cmdline.txt",
    "/config.txt",
];

/// Reads through a filesystem driver: stat, list, read and readlink of the usual paths and of
/// what the listings find.
fn read_around(fs: &mut dyn FileOps) {
    let mut paths: Vec<String> = PATHS.iter().map(|p| p.to_string()).collect();
    for dir in ["/", "/etc"] {
        if let Ok(entries) = fs.list(dir) {
            paths.extend(
                entries
                    .iter()
                    .take(16)
                    .map(|e| format!("{}/{}", dir.trim_end_matches('/'), e.name)),
            );
        }
    }
    for p in &paths {
        let _ = fs.stat(p);
        let _ = fs.read(p);
        let _ = fs.read_link(p);
        let _ = fs.exists(p);
    }
}

/// Edits through a filesystem driver, as an overlay makes them.
fn edit_around(fs: &mut dyn FileOps) {
    let meta = Meta::root(0o644, 1_735_689_600);
    let dir = Meta::root(0o755, 1_735_689_600);
    let _ = fs.write_file("/etc/hostname", b"node1\n", meta);
    let _ = fs.mkdir_p("/etc/pibake/a/b", dir);
    let _ = fs.write_file("/etc/pibake/a/b/big", &[0x42; 70_000], meta);
    let _ = fs.symlink("/etc/pibake/link", "a/b/big", meta);
    let _ = fs.set_meta("/etc/passwd", Meta::root(0o600, 0));
    let _ = fs.remove("/etc/fstab");
    let _ = fs.write_file("/config.txt", b"dtparam=audio=on\n", meta);
    let _ = fs.list("/etc/pibake/a/b");
    let _ = fs.read("/etc/pibake/a/b/big");
}

/// The ext4 driver (a dependency, `rust-fs-ext4`) behind pibake's open checks, read-only.
pub fn ext4_read(data: &[u8]) {
    let Some(region) = Sparse::new(data).region(false) else {
        return;
    };
    let Ok(mut fs) = crate::fs::ext4::Ext4::open(region, 0) else {
        return;
    };
    let _ = fs.info();
    read_around(&mut fs);
}

/// The ext4 driver writing into a damaged or hostile filesystem that passed pibake's checks.
pub fn ext4_edit(data: &[u8]) {
    let Some(region) = Sparse::new(data).region(true) else {
        return;
    };
    if let Ok(mut fs) = crate::fs::ext4::Ext4::open(region, 0) {
        edit_around(&mut fs);
    }
}

/// The FAT free-space map: boot sector geometry and the first FAT, read directly.
pub fn fat_free(data: &[u8]) {
    let dev = Sparse::new(data);
    if let Ok(Some(free)) = crate::fs::fat::free::free_ranges(&dev) {
        assert!(
            free.iter()
                .all(|r| r.start < r.end && r.end <= ReadAt::len(&dev)),
            "free ranges must be non-empty and inside the partition"
        );
    }
}

/// The FAT driver (a dependency, `fatfs`) behind pibake's wrapper, read-only.
pub fn fat_read(data: &[u8]) {
    let Some(region) = Sparse::new(data).region(false) else {
        return;
    };
    let Ok(mut fs) = crate::fs::fat::Fat::open(region, 0) else {
        return;
    };
    let _ = fs.label();
    let _ = fs.free_bytes();
    read_around(&mut fs);
}

/// The FAT driver writing into a damaged or hostile boot partition.
pub fn fat_edit(data: &[u8]) {
    let Some(region) = Sparse::new(data).region(true) else {
        return;
    };
    if let Ok(mut fs) = crate::fs::fat::Fat::open(region, 0) {
        edit_around(&mut fs);
    }
}

/// A whole disk as `inspect` and `build` meet it: the partition table, each partition's free
/// map and driver, and the facts read from the boot and root filesystems.
pub fn image(data: &[u8]) {
    let dev = Sparse::new(data);
    let len = dev.len;
    let disk = Arc::new(CowDisk::new(Arc::new(dev)));
    let Ok(whole) = Region::new(disk.clone(), 0, len, false) else {
        return;
    };
    let Ok(table) = crate::disk::partition::read(&whole) else {
        return;
    };
    let base = disk.base();
    let (mut root, mut boot) = (None, None);
    for p in table.partitions.iter().take(4) {
        let window = crate::fs::Window::new(base.as_ref(), p.offset(), p.bytes());
        let _ = crate::fs::free_ranges(p.fs, &window);
        let Ok(region) = Region::new(disk.clone(), p.offset(), p.bytes(), false) else {
            continue;
        };
        match p.fs {
            crate::disk::FsKind::Ext4 if root.is_none() => {
                root = crate::fs::ext4::Ext4::open(region, 0).ok();
            }
            crate::disk::FsKind::Vfat if boot.is_none() => {
                boot = crate::fs::fat::Fat::open(region, 0).ok();
            }
            _ => {}
        }
    }
    if let (Some(root), Some(boot)) = (&mut root, &mut boot) {
        let _ = crate::facts::gather(root, boot);
    }
}

/// The OS list JSON, with its nested `subitems` (nested URLs are refused, not fetched).
pub fn oslist(data: &[u8]) {
    if let Ok(entries) = crate::acquire::oslist::parse("https://example.invalid/os_list.json", data)
    {
        for e in &entries {
            let _ = e.require();
            let _ = e.size();
        }
    }
}

/// A recipe (TOML), checked as `pibake plan` checks it against the built-in overlays.
pub fn recipe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = crate::recipe::Document::parse("fuzz.toml", text) else {
        return;
    };
    let Ok(role) = doc.role() else { return };
    if let Ok(layers) = crate::overlay::Layers::resolve(&role, &[], &[]) {
        let _ = doc.validate(&layers);
    }
}

/// A build manifest (JSON), as `pibake flash` and `verify` read one back.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = crate::bake::manifest::Manifest::parse(text) {
        let _ = m.image();
    }
}

/// A bmap file (XML, format 1.x or 2.x).
pub fn bmap(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(b) = crate::output::bmap::parse(&text) {
        let _ = (b.blocks(), b.mapped_blocks(), b.mapped_bytes());
    }
}

/// The text files facts are read from: os-release, passwd, dpkg status, fstab and cmdline,
/// as pieces of the input separated by NUL bytes.
pub fn facts(data: &[u8]) {
    let mut p = pieces(data);
    let (os, passwd, status, fstab, cmdline) = (
        p.next().unwrap_or_default(),
        p.next().unwrap_or_default(),
        p.next().unwrap_or_default(),
        p.next().unwrap_or_default(),
        p.next().unwrap_or_default(),
    );
    let _ = crate::facts::OsRelease::parse(&os);
    let _ = crate::facts::accounts(&passwd);
    let _ = crate::facts::installed_packages(&status);
    let _ = crate::facts::fstab_boot_mount(&fstab);
    let _ = crate::facts::mentions_partuuid(cmdline.as_bytes(), "6c586e13-02");
}

/// A `URL.sha256` checksum sidecar, and a `--sha256` value.
pub fn sidecar(data: &[u8]) {
    let _ = crate::acquire::sidecar_sha256(data);
    let _ = crate::acquire::normalize_sha256(&String::from_utf8_lossy(data));
}

/// An OpenPGP public key and detached signature (armored or binary), as the signature check
/// reads them before any verification; the input's first byte splits it into the two.
pub fn openpgp(data: &[u8]) {
    use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split) * rest.len() / 256;
    let (key, sig) = rest.split_at(at);
    let _ = SignedPublicKey::from_reader_single(key);
    let _ = DetachedSignature::from_reader_single(sig);
    let _ = SignedPublicKey::from_reader_single(rest);
    if let Ok((sig, _)) = DetachedSignature::from_reader_single(rest) {
        let _ = sig.signature.issuer();
    }
}

/// An overlay's `overlay.toml` from a directory given with `--overlay`.
pub fn overlay(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::overlay::Overlay::from_parts(
        "fuzz/overlay.toml",
        "fuzz",
        &text,
        std::collections::BTreeMap::new(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_reads_the_bytes_then_zeros() {
        let mut data = 2u32.to_le_bytes().to_vec();
        data.extend_from_slice(b"abc");
        let dev = Sparse::new(&data);
        assert_eq!(dev.len, 1024);
        let mut buf = [0xffu8; 5];
        BlockDev::read_at(&dev, 1, &mut buf).unwrap();
        assert_eq!(&buf, b"bc\0\0\0");
        assert!(BlockDev::read_at(&dev, 1020, &mut buf).is_err());
    }

    fn seed(target: &str, name: &str) -> Vec<u8> {
        let path = format!("{}/fuzz/corpus/{target}/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The seeds are worth fuzzing from only if they get past the first checks: each kind of
    /// disk seed opens, and the `.xz` ones decode.
    #[test]
    fn seeds_reach_the_success_paths() {
        let table = crate::disk::partition::read(
            &Sparse::new(&seed("partition", "bookworm"))
                .region(false)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(table.partitions.len(), 2);
        let gpt = Sparse::new(&seed("partition", "gpt"))
            .region(false)
            .unwrap();
        assert_eq!(
            crate::disk::partition::read(&gpt).unwrap().partitions.len(),
            2
        );

        for name in ["tiny-1k", "csum-4k", "ext2-1k"] {
            let region = Sparse::new(&seed("ext4_read", name)).region(false).unwrap();
            let mut fs = crate::fs::ext4::Ext4::open(region, 0).unwrap();
            // The driver lists only extent-mapped directories, which ext2 has none of.
            if name != "ext2-1k" {
                let etc = fs.list("/etc").unwrap();
                assert!(etc.iter().any(|e| e.name == "os-release"), "{name}");
            }
            let dev = Sparse::new(&seed("ext4_free", name));
            assert!(
                crate::fs::ext4::free::free_ranges(&dev).unwrap().is_some(),
                "{name}"
            );
        }
        for name in ["fat12", "fat16", "fat32"] {
            let region = Sparse::new(&seed("fat_read", name)).region(false).unwrap();
            let mut fs = crate::fs::fat::Fat::open(region, 0).unwrap();
            let dev = Sparse::new(&seed("fat_free", name));
            assert!(
                crate::fs::fat::free::free_ranges(&dev).unwrap().is_some(),
                "{name}"
            );
            if name != "fat32" {
                assert!(
                    fs.read("/cmdline.txt").unwrap().starts_with(b"console="),
                    "{name}"
                );
            }
        }

        let tmp = temp_file(&seed("xz_index", "crc64-1k-blocks")).unwrap();
        let index = crate::xz::XzIndex::read(tmp.as_file()).unwrap();
        assert!(index.blocks().len() > 4);
        let raw = seed("xz_block", "crc64-1k-blocks-0");
        let (head, raw) = raw.split_first_chunk::<6>().unwrap();
        let block = crate::xz::XzBlock {
            file_offset: 12,
            total_size: raw.len() as u64,
            unpadded_size: raw.len() as u64 - u64::from(head[4]),
            uncompressed_offset: 0,
            uncompressed_size: 1024,
        };
        assert_eq!(
            crate::xz::decode_raw(raw, &block, 0, head[0])
                .unwrap()
                .len(),
            1024
        );
        assert!(crate::xz::lzma2_chunks(&seed("lzma2", "crc64-1k-blocks-0")).is_some());

        let entries =
            crate::acquire::oslist::parse("https://h/l.json", &seed("oslist", "array")).unwrap();
        assert_eq!(entries.len(), 1);
        let text = String::from_utf8(seed("bmap", "bmaptool")).unwrap();
        crate::output::bmap::parse(&text).unwrap();
        let text = String::from_utf8(seed("manifest", "build")).unwrap();
        crate::bake::manifest::Manifest::parse(&text).unwrap();
    }

    /// fatfs underflows on cluster 1: pibake's FAT wrapper turns that into a refusal.
    #[test]
    fn a_fatfs_panic_is_a_refusal() {
        let path = format!(
            "{}/fuzz/regressions/fat_read/fatfs-cluster-1-underflow",
            env!("CARGO_MANIFEST_DIR")
        );
        let region = Sparse::new(&std::fs::read(path).unwrap())
            .region(false)
            .unwrap();
        let mut fs = crate::fs::fat::Fat::open(region, 0).unwrap();
        let mut paths: Vec<String> = PATHS.iter().map(|p| p.to_string()).collect();
        paths.extend(fs.list("/").unwrap().iter().map(|e| format!("/{}", e.name)));
        let refused = paths.iter().any(|p| {
            matches!(fs.read(p), Err(crate::fs::FsError::BadFat(m)) if m.contains("cluster number"))
        });
        assert!(refused, "some read meets the bad cluster");
    }

    #[test]
    fn targets_take_empty_and_tiny_inputs() {
        for (_, target) in TARGETS {
            target(&[]);
            target(&[0]);
            target(&[0xff; 7]);
        }
    }
}
