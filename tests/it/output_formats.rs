//! Raw, .img.xz and .img.zst outputs: every format decodes to the same bytes, the system's `xz`
//! and `zstd` accept them, a failure leaves nothing behind, and repeated writes are identical
//! whatever the number of threads.

use crate::output_common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use output_common::{MIB, Shape, make_image, scratch, sha256};
use pibake::compress::Compression;
use pibake::disk::{BlockDev, CowDisk, Image};
use pibake::fs::FileOps;
use pibake::fs::ext4::Ext4;
use pibake::output::{self, Format, OutputError};
use pibake::progress::Silent;

const EPOCH: i64 = 1_735_689_600;

/// Open the test image and change a file in its root, so the outputs combine base and layer.
fn edited(image: &Path) -> Image {
    let img = Image::open(image).unwrap();
    let root = img.root().unwrap().clone();
    let mut fs = Ext4::open(img.region(&root, true).unwrap(), EPOCH).unwrap();
    fs.write_file(
        "/etc/hostname",
        b"master\n",
        pibake::fs::Meta::root(0o644, EPOCH),
    )
    .unwrap();
    assert!(!img.disk.changed_chunks().is_empty());
    img
}

fn disk_sha(disk: &CowDisk) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < disk.len() {
        let n = (disk.len() - at).min(MIB) as usize;
        disk.read_at(at, &mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        at += n as u64;
    }
    hex::encode(h.finalize())
}

fn decoded_sha(tool: &str, file: &Path) -> String {
    let o = Command::new(tool).arg("-dc").arg(file).output().unwrap();
    assert!(o.status.success(), "{tool} -dc failed");
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(&o.stdout))
}

fn tool_ok(tool: &str, args: &[&str], file: &Path) -> String {
    let o = Command::new(tool).args(args).arg(file).output().unwrap();
    assert!(
        o.status.success(),
        "{tool} {args:?} rejected {}: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_format_decodes_to_the_raw_image() {
    let dir = scratch("formats");
    let layout = make_image(dir.path(), "base.img", Shape::default());
    let img = edited(&layout.image);
    let want = disk_sha(&img.disk);
    let len = img.disk.len();

    let raw = output::write(&img.disk, &dir.path().join("out.img"), &Silent).unwrap();
    assert_eq!(raw.format, Format::Raw);
    assert_eq!((raw.bytes, raw.raw_bytes), (len, len));
    assert_eq!(raw.sha256, want);
    assert_eq!(raw.raw_sha256.as_deref(), Some(want.as_str()));
    assert_eq!(sha256(&raw.path), want);
    // Sparse: zero runs are holes, so far less is allocated than the image size.
    {
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&raw.path).unwrap().blocks() * 512;
        assert!(allocated < len / 2, "{allocated} bytes allocated for {len}");
    }

    let xz = output::write(&img.disk, &dir.path().join("out.img.xz"), &Silent).unwrap();
    assert_eq!(xz.format, Format::Xz);
    assert_eq!(xz.raw_sha256.as_deref(), Some(want.as_str()));
    assert_eq!(xz.raw_bytes, len);
    assert_eq!(xz.bytes, std::fs::metadata(&xz.path).unwrap().len());
    assert_eq!(xz.sha256, sha256(&xz.path));
    tool_ok("xz", &["-t"], &xz.path);
    assert_eq!(decoded_sha("xz", &xz.path), want);
    // Multi-block, 24 MiB blocks, CRC64, as xz itself lists them.
    let (blocks, streams) = crate::common::xz_list(&xz.path);
    assert_eq!((blocks.len() as u64, streams), (len.div_ceil(24 * MIB), 1));
    assert!(blocks.iter().all(|b| b.check == "CRC64"), "{blocks:?}");

    let zst = output::write(&img.disk, &dir.path().join("out.img.zst"), &Silent).unwrap();
    assert_eq!(zst.format, Format::Zstd);
    assert_eq!(zst.raw_sha256.as_deref(), Some(want.as_str()));
    assert_eq!(zst.sha256, sha256(&zst.path));
    tool_ok("zstd", &["-t", "-q"], &zst.path);
    assert_eq!(decoded_sha("zstd", &zst.path), want);
    // The frame records its content size.
    let info = tool_ok("zstd", &["-lv"], &zst.path);
    assert!(info.contains(&len.to_string()), "{info}");

    // The Imager entry describes the .xz download and the raw image inside it.
    let info = output::imager::EntryInfo {
        name: "Cluster master".into(),
        description: "Baked by pibake".into(),
        init_format: "none".into(),
        epoch: EPOCH,
        ..Default::default()
    };
    let entry = output::imager::entry(&info, &xz);
    let json_path = dir.path().join("repo.json");
    output::imager::write(&json_path, vec![entry]).unwrap();
    let repo: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let e = &repo["os_list"][0];
    assert_eq!(e["url"], "out.img.xz");
    assert_eq!(
        e["image_download_size"],
        std::fs::metadata(&xz.path).unwrap().len()
    );
    assert_eq!(e["image_download_sha256"], sha256(&xz.path));
    assert_eq!(e["extract_size"], len);
    assert_eq!(e["extract_sha256"], want);
    assert_eq!(e["release_date"], "2025-01-01");

    // pibake reads its own outputs back as bases.
    let back = Image::open(&xz.path).unwrap();
    assert_eq!(disk_sha(&back.disk), want);
    // A .zst is read from its start only: decoded first, as pibake's commands do.
    let decoded = dir.path().join("back.img");
    let mut file = std::fs::File::create(&decoded).unwrap();
    pibake::compress::decode_to(&zst.path, Compression::Zstd, &mut file, &mut |_| {}).unwrap();
    let back =
        Image::open_decoded(&zst.path, &decoded, Compression::Zstd, "zstd".into(), None).unwrap();
    assert_eq!(disk_sha(&back.disk), want);
    assert!(matches!(
        Image::open(&zst.path),
        Err(pibake::disk::ImageError::NotDecoded { .. })
    ));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn outputs_do_not_depend_on_threads_or_runs() {
    let dir = scratch("determinism");
    let layout = make_image(dir.path(), "base.img", Shape::default());
    let img = edited(&layout.image);
    let a = output::xz::write_with_threads(&img.disk, &dir.path().join("a.img.xz"), 1, &Silent)
        .unwrap();
    let b = output::xz::write_with_threads(&img.disk, &dir.path().join("b.img.xz"), 3, &Silent)
        .unwrap();
    assert_eq!(a.sha256, b.sha256, "xz output depends on the thread count");
    let c = output::zstd::write_with_workers(&img.disk, &dir.path().join("c.img.zst"), 1, &Silent)
        .unwrap();
    let d = output::zstd::write_with_workers(&img.disk, &dir.path().join("d.img.zst"), 3, &Silent)
        .unwrap();
    assert_eq!(
        c.sha256, d.sha256,
        "zstd output depends on the worker count"
    );
    // A second, independent open and edit of the same base gives the same files.
    let again = edited(&layout.image);
    let e = output::write(&again.disk, &dir.path().join("e.img.xz"), &Silent).unwrap();
    let f = output::write(&again.disk, &dir.path().join("f.img"), &Silent).unwrap();
    let g = output::write(&img.disk, &dir.path().join("g.img"), &Silent).unwrap();
    assert_eq!(e.sha256, a.sha256);
    assert_eq!(f.sha256, g.sha256);
}

/// A base that fails to read past a given offset, like a disk going bad mid-build.
struct Failing {
    len: u64,
    fail_from: u64,
}

impl BlockDev for Failing {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset + buf.len() as u64 > self.fail_from {
            return Err(std::io::Error::other("injected read failure"));
        }
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = ((offset as usize + i) % 251) as u8);
        Ok(())
    }
}

#[test]
fn a_failure_leaves_nothing_under_the_final_name() {
    let dir = scratch("failure");
    let disk = CowDisk::new(Arc::new(Failing {
        len: 40 * MIB,
        fail_from: 30 * MIB,
    }));
    for name in ["f.img", "f.img.xz", "f.img.zst"] {
        let dest = dir.path().join(name);
        // An older output under the same name survives a failed rewrite untouched.
        std::fs::write(&dest, b"previous").unwrap();
        let err = output::write(&disk, &dest, &Silent).unwrap_err();
        assert!(matches!(err, OutputError::Read { .. }), "{err}");
        assert!(!err.is_bad_input());
        assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
        std::fs::remove_file(&dest).unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    let err = output::write(&disk, &dir.path().join("x.img.gz"), &Silent).unwrap_err();
    assert!(err.is_bad_input());
    let err = output::write(&disk, &dir.path().join("no/such/dir/x.img"), &Silent).unwrap_err();
    assert!(err.is_bad_input(), "{err}");
}
