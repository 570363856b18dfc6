//! Shared by the integration tests: fixture images, and the independent tools that judge them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The crate's root directory.
pub fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `pibake` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pibake"))
}

/// A cache directory for the `pibake` runs of the tests, under `target/`, never the user's.
pub fn test_cache() -> PathBuf {
    root_dir().join("target/test-cache")
}

/// The `SOURCE_DATE_EPOCH` of every test build, so outputs compare byte for byte across runs.
pub const EPOCH: &str = "1735689600";

/// A `pibake` command in the tests' environment: the fixed epoch, `cache` as its cache, no colour.
pub fn pibake_in(cache: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("SOURCE_DATE_EPOCH", EPOCH)
        .env("PIBAKE_CACHE_DIR", cache)
        .env("NO_COLOR", "1");
    c
}

/// Run `pibake` with `args` in the tests' environment and the shared test cache.
pub fn pibake(args: &[&str]) -> Output {
    pibake_in(&test_cache())
        .args(args)
        .output()
        .expect("run pibake")
}

/// Run `pibake` with `args` on `cache`, insist that it succeeds, and return everything it
/// printed (stdout, then stderr).
pub fn pibake_ok_in(cache: &Path, args: &[&str]) -> String {
    let o = pibake_in(cache).args(args).output().expect("run pibake");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "pibake {args:?}:\n{text}");
    text
}

/// The smallest recipe a build accepts: a host name and a user with a password.
pub fn minimal_recipe(hostname: &str) -> String {
    format!(
        "[node]\nhostname = \"{hostname}\"\n[user]\nname = \"pi\"\npassword = \"pw-for-tests\"\n"
    )
}

/// Write `body` as `dir/master.toml`, the recipe file the build tests pass to `pibake`.
pub fn write_recipe(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("master.toml");
    std::fs::write(&p, body).expect("write the recipe");
    p
}

static BUILD: Mutex<()> = Mutex::new(());

/// When the fixture generator (build.sh and the gentree package) last changed.
fn generator_changed() -> Option<std::time::SystemTime> {
    let dir = root_dir().join("tests/fixtures");
    let gentree = std::fs::read_dir(dir.join("gentree")).ok()?;
    let files = gentree
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .chain([dir.join("build.sh")]);
    files
        .map(|p| p.metadata().and_then(|m| m.modified()).ok())
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

/// The fixture image for `release` (bullseye, bookworm, trixie, gpt), built on first use and kept
/// under `target/fixtures`. Rebuilt when any part of the generator is newer than the image.
pub fn fixture(release: &str) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let dir = root_dir().join("target/fixtures");
    let img = dir.join(format!("{release}.img"));
    let script = root_dir().join("tests/fixtures/build.sh");
    let fresh = match (
        img.metadata().and_then(|m| m.modified()),
        generator_changed(),
    ) {
        (Ok(built), Some(changed)) => built >= changed,
        _ => false,
    };
    if !fresh {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("bash")
            .arg(&script)
            .arg(release)
            .arg(&dir)
            .output()
            .expect("run tests/fixtures/build.sh");
        assert!(
            out.status.success(),
            "building fixture {release} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    img
}

/// The fixture for `release` as a multi-block `.xz` (1 MiB blocks, so even the small fixtures
/// have hundreds), made with the real `xz` once and kept beside the image. Preset 0 keeps that
/// quick; pibake re-encodes at its own preset either way.
pub fn fixture_xz(release: &str) -> PathBuf {
    fixture_xz_with(release, "blocks", "-T0 -0 --block-size=1MiB")
}

/// The fixture for `release` as a single-block `.xz` (single-threaded xz, no block size): the
/// kind of file that cannot be read at random.
pub fn fixture_xz_single(release: &str) -> PathBuf {
    fixture_xz_with(release, "single", "-T1 -0")
}

fn fixture_xz_with(release: &str, kind: &str, xz_args: &str) -> PathBuf {
    static XZ: Mutex<()> = Mutex::new(());
    let img = fixture(release);
    let _guard = XZ.lock().unwrap_or_else(|p| p.into_inner());
    let out = img.with_extension(format!("{kind}.img.xz"));
    let fresh = match (out.metadata(), img.metadata()) {
        (Ok(o), Ok(i)) => o.modified().unwrap() >= i.modified().unwrap(),
        _ => false,
    };
    if !fresh {
        // Test binaries run in parallel processes: each writes its own temporary file.
        let tmp = out.with_extension(format!("partial.{}", std::process::id()));
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "xz {xz_args} -c '{}' > '{}'",
                img.display(),
                tmp.display()
            ))
            .status()
            .expect("run xz");
        assert!(st.success(), "xz failed on {}", img.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// What the fixture generator recorded about `release`.
pub fn expect(release: &str) -> serde_json::Value {
    fixture(release);
    let p = root_dir().join(format!("target/fixtures/{release}.expect.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// The releases every fixture-wide test runs over.
pub const RELEASES: [&str; 3] = ["bullseye", "bookworm", "trixie"];

/// SHA-256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Copy `len` bytes at `offset` of `image` into a new sparse file, for tools that want a bare
/// filesystem.
pub fn extract(image: &Path, offset: u64, len: u64, out: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut src = std::fs::File::open(image).unwrap();
    src.seek(SeekFrom::Start(offset)).unwrap();
    let mut dst = std::fs::File::create(out).unwrap();
    dst.set_len(len).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(done)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        done += n as u64;
    }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable (is it installed?): {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `e2fsck -fn` must find nothing to fix.
pub fn assert_e2fsck_clean(fs_image: &Path) {
    let o = run("e2fsck", &["-fn", fs_image.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "e2fsck -fn found problems:\n{}",
        text(&o)
    );
}

/// `fsck.vfat -n` must find nothing to fix.
pub fn assert_fsck_vfat_clean(fs_image: &Path) {
    let o = run("fsck.vfat", &["-n", fs_image.to_str().unwrap()]);
    let t = text(&o);
    assert!(
        o.status.success()
            && !t.contains("Dirty bit")
            && !t.to_lowercase().contains("free cluster summary wrong"),
        "fsck.vfat -n found problems:\n{t}"
    );
}

/// Run one debugfs request against an ext4 image; returns stdout.
pub fn debugfs(fs_image: &Path, request: &str) -> String {
    let o = run("debugfs", &["-R", request, fs_image.to_str().unwrap()]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// File contents through debugfs `cat`.
pub fn debugfs_cat(fs_image: &Path, path: &str) -> Vec<u8> {
    let o = run(
        "debugfs",
        &["-R", &format!("cat \"{path}\""), fs_image.to_str().unwrap()],
    );
    o.stdout
}

/// Contents of `path` on a FAT filesystem image through mtools' `mtype`.
pub fn mtype(fs_image: &Path, path: &str) -> Vec<u8> {
    let o = Command::new("mtype")
        .args(["-i", fs_image.to_str().unwrap(), &format!("::{path}")])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mtype (mtools) not runnable");
    assert!(o.status.success(), "mtype {path}: {}", text(&o));
    o.stdout
}

/// Partition (start sector, sector count) from a fixture's expect.json.
pub fn part(expect: &serde_json::Value, index: u64) -> (u64, u64) {
    let p = expect["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["index"] == index)
        .unwrap();
    (
        p["start"].as_u64().unwrap() * 512,
        p["sectors"].as_u64().unwrap() * 512,
    )
}

/// Run `cmd` with `sh -c`; it must succeed.
pub fn sh(cmd: &str) {
    let s = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .expect("run sh");
    assert!(s.success(), "{cmd}");
}

/// A private copy `dir/RELEASE.img` of a fixture whose root partition went through `change`, a
/// shell command in which `FS` names a file holding that partition.
pub fn fixture_with_root(release: &str, dir: &Path, change: &str) -> PathBuf {
    let img = dir.join(format!("{release}.img"));
    sh(&format!(
        "cp --sparse=always {} {}",
        fixture(release).display(),
        img.display()
    ));
    let (off, len) = part(&expect(release), 2);
    let fs = dir.join("root.ext4");
    extract(&img, off, len, &fs);
    sh(&change.replace("FS", &fs.display().to_string()));
    sh(&format!(
        "dd if={} of={} bs=1M seek={off} oflag=seek_bytes conv=notrunc,sparse status=none",
        fs.display(),
        img.display()
    ));
    img
}

/// Copy a region of the (edited) disk into a sparse file for the external tools.
pub fn dump(region: &pibake::disk::Region, out: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(out).unwrap();
    f.set_len(region.len()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < region.len() {
        let n = (region.len() - pos).min(buf.len() as u64) as usize;
        region.read_at(pos, &mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            f.seek(SeekFrom::Start(pos)).unwrap();
            f.write_all(&buf[..n]).unwrap();
        }
        pos += n as u64;
    }
}

/// One block of an `.xz` file as the real `xz --robot -lvv` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedBlock {
    /// Offset of the block in the file.
    pub file_offset: u64,
    /// Offset of its data in the decoded stream.
    pub uncompressed_offset: u64,
    /// Bytes of the block in the file (header, data, padding, check).
    pub total_size: u64,
    /// Bytes it decodes to.
    pub uncompressed_size: u64,
    /// Check type name (`CRC64`, `SHA-256`, ...).
    pub check: String,
}

impl ListedBlock {
    /// The block's bytes within `file`.
    pub fn bytes<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.file_offset as usize..(self.file_offset + self.total_size) as usize]
    }

    /// Whether decoded offset `at` falls inside this block.
    pub fn holds(&self, at: u64) -> bool {
        (self.uncompressed_offset..self.uncompressed_offset + self.uncompressed_size).contains(&at)
    }
}

/// The blocks and the stream count of `path`, per `xz --robot -lvv`: the one parser of its
/// output for every test.
pub fn xz_list(path: &Path) -> (Vec<ListedBlock>, usize) {
    let o = Command::new("xz")
        .args(["--robot", "-lvv"])
        .arg(path)
        .output()
        .expect("run xz");
    assert!(
        o.status.success(),
        "xz --robot -lvv {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    // block, stream, block in stream, block in file, compressed offset, uncompressed offset,
    // total size, uncompressed size, ratio, check, ...
    let blocks = text
        .lines()
        .filter(|l| l.starts_with("block\t"))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| f[i].parse::<u64>().expect("xz --robot number");
            ListedBlock {
                file_offset: n(4),
                uncompressed_offset: n(5),
                total_size: n(6),
                uncompressed_size: n(7),
                check: f[9].to_string(),
            }
        })
        .collect();
    let streams = text.lines().filter(|l| l.starts_with("stream\t")).count();
    (blocks, streams)
}
