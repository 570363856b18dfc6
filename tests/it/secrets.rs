//! Secrets stay secret: no password, Wi-Fi key or password hash in any log, plan, manifest,
//! cache file or error message; the files that hold them in the image have the modes their
//! readers demand; and a rebuild keeps nothing of the secrets it replaced, so the freed space of
//! an output is zero and `bmaptool copy` reproduces the output byte for byte.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{
    assert_e2fsck_clean, assert_fsck_vfat_clean, debugfs, expect, extract, fixture, part,
    pibake_in, pibake_ok_in as ok, sha256,
};

const PASSWORD_A: &str = "first-secret-pw";
const PSK_A: &str = "first-wifi-key-A";
const PASSWORD_B: &str = "second-secret-pw";
const PSK_B: &str = "second-wifi-key-B";
/// Where NetworkManager reads the uplink's key on the bookworm fixture.
const NM_FILE: &str = "/etc/NetworkManager/system-connections/pibake-uplink.nmconnection";

fn recipe(dir: &Path, name: &str, host: &str, password: &str, psk: &str) -> PathBuf {
    let p = dir.join(name);
    let body = format!(
        "[node]\nhostname = \"{host}\"\nrole = \"master\"\n\
         [user]\nname = \"pi\"\npassword = \"{password}\"\n\
         [wifi]\nssid = \"uplink\"\npsk = \"{psk}\"\ncountry = \"GB\"\n"
    );
    std::fs::write(&p, body).unwrap();
    p
}

/// Run pibake with its own cache, keeping everything it printed.
fn run(cache: &Path, args: &[&str]) -> (Output, String) {
    let o = pibake_in(cache).args(args).output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o, text)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Whether `needle` occurs anywhere in the file, read in pieces that overlap by the needle's
/// length so a match across two pieces is not missed.
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let keep = needle.len() - 1;
    let mut have = 0;
    loop {
        let n = f.read(&mut buf[have..]).unwrap();
        if n == 0 {
            return false;
        }
        have += n;
        if buf[..have].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        if have > keep {
            buf.copy_within(have - keep..have, 0);
            have = keep;
        }
    }
}

/// The password hash pibake wrote for the user (boot:/userconf.txt is `user:hash`).
fn hash_in(cache: &Path, image: &Path) -> String {
    let (o, _) = run(cache, &["cat", s(image), "boot:/userconf.txt"]);
    let text = String::from_utf8(o.stdout).unwrap();
    let hash = text.trim().split_once(':').unwrap().1.to_string();
    assert!(hash.starts_with("$6$"), "{text}");
    hash
}

/// `bmaptool copy` of `image` (with the `.bmap` beside it) gives back exactly `image`.
fn bmaptool_reproduces(image: &Path) {
    let copy = image.with_extension("copy");
    let o = Command::new("bmaptool")
        .arg("copy")
        .arg(image)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bmaptool copy {}:\n{}",
        image.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256(&copy),
        sha256(image),
        "bmaptool copy of {} differs: bytes the map calls free are not zero",
        image.display()
    );
    std::fs::remove_file(copy).unwrap();
}

#[test]
fn a_rebuild_keeps_nothing_of_the_secrets_it_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, cache) = (tmp.path(), tmp.path().join("cache"));
    let base = fixture("bookworm");
    let base_sha = sha256(&base);
    let ra = recipe(dir, "a.toml", "first", PASSWORD_A, PSK_A);
    let rb = recipe(dir, "b.toml", "second", PASSWORD_B, PSK_B);
    let a = dir.join("a.img");
    let b = dir.join("b.img");
    ok(
        &cache,
        &["build", s(&ra), "--base", s(&base), "-o", s(&a), "--bmap"],
    );
    let hash_a = hash_in(&cache, &a);
    // The search finds what is there: the first build holds its own key and hash.
    assert!(file_contains(&a, PSK_A.as_bytes()));
    assert!(file_contains(&a, hash_a.as_bytes()));

    // Rebuild the built image with new secrets.
    ok(
        &cache,
        &["build", s(&rb), "--base", s(&a), "-o", s(&b), "--bmap"],
    );
    let hash_b = hash_in(&cache, &b);
    assert!(file_contains(&b, PSK_B.as_bytes()));
    assert!(file_contains(&b, hash_b.as_bytes()));
    for (what, old) in [("Wi-Fi key", PSK_A), ("password hash", hash_a.as_str())] {
        assert!(
            !file_contains(&b, old.as_bytes()),
            "the old {what} is still in the rebuilt image"
        );
    }
    for plain in [PASSWORD_A, PASSWORD_B] {
        assert!(!file_contains(&b, plain.as_bytes()), "a plain password");
    }

    // Free space is zero, so the block map reproduces both outputs, and they are still sound.
    bmaptool_reproduces(&a);
    bmaptool_reproduces(&b);
    let e = expect("bookworm");
    let (boot_at, boot_len) = part(&e, 1);
    let (root_at, root_len) = part(&e, 2);
    extract(&b, boot_at, boot_len, &dir.join("b.boot"));
    extract(&b, root_at, root_len, &dir.join("b.root"));
    assert_fsck_vfat_clean(&dir.join("b.boot"));
    assert_e2fsck_clean(&dir.join("b.root"));
    assert_eq!(sha256(&base), base_sha, "the base changed");
}

#[test]
fn no_secret_reaches_a_log_a_plan_a_manifest_a_cache_file_or_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, cache) = (tmp.path(), tmp.path().join("cache"));
    let base = fixture("bookworm");
    let r = recipe(dir, "master.toml", "master", PASSWORD_A, PSK_A);
    let out = dir.join("out.img");
    let mut seen = String::new();
    seen += &ok(&cache, &["plan", s(&r), "--base", s(&base)]);
    seen += &ok(&cache, &["plan", s(&r), "--base", s(&base), "--json"]);
    seen += &ok(
        &cache,
        &["build", s(&r), "--base", s(&base), "-o", s(&out), "--bmap"],
    );
    let manifest = PathBuf::from(format!("{}.manifest.json", out.display()));
    seen += &std::fs::read_to_string(&manifest).unwrap();
    seen += &std::fs::read_to_string(format!("{}.bmap", out.display())).unwrap();
    seen += &ok(&cache, &["verify", s(&manifest)]);
    seen += &ok(&cache, &["inspect", s(&out)]);
    seen += &ok(&cache, &["cache", "ls"]);
    // Refusals quote the recipe's lines and values: never a secret's.
    let short = recipe(dir, "short.toml", "master", PASSWORD_A, "sh0rtpw");
    let bad_host = recipe(dir, "host.toml", "no_such host", PASSWORD_A, PSK_A);
    let hashed = dir.join("hashed.toml");
    std::fs::write(
        &hashed,
        "[node]\nhostname = \"m\"\n[user]\nname = \"pi\"\npassword_hash = \"not-a-crypt-hash-secret\"\n",
    )
    .unwrap();
    let refused = dir.join("refused.img");
    for bad in [&short, &bad_host, &hashed] {
        let (o, text) = run(
            &cache,
            &["build", s(bad), "--base", s(&base), "-o", s(&refused)],
        );
        assert_eq!(o.status.code(), Some(2), "{text}");
        seen += &text;
    }
    let mut cache_files = String::new();
    for e in walk(&cache) {
        if std::fs::metadata(&e).unwrap().len() < 1 << 20 {
            cache_files += &String::from_utf8_lossy(&std::fs::read(&e).unwrap());
        }
    }

    let hash = hash_in(&cache, &out);
    for secret in [
        PASSWORD_A,
        PSK_A,
        hash.as_str(),
        "sh0rtpw",
        "not-a-crypt-hash-secret",
    ] {
        assert!(!seen.contains(secret), "{secret:?} was shown:\n{seen}");
        assert!(!cache_files.contains(secret), "{secret:?} is in the cache");
    }

    // The key file is the user's and NetworkManager's alone (it ignores a readable one), the
    // shadow file root's and shadow's, and the manifest records both modes.
    let e = expect("bookworm");
    let (root_at, root_len) = part(&e, 2);
    let root = dir.join("root");
    extract(&out, root_at, root_len, &root);
    for (path, mode) in [(NM_FILE, 0o600), ("/etc/shadow", 0o640)] {
        let st = debugfs(&root, &format!("stat {path}"));
        let want = format!("Mode:  {mode:04o}");
        assert!(st.contains(&want), "{path}: {st}");
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        let ops = m["plan"]["ops"].as_array().unwrap();
        let op = ops.iter().find(|o| o["path"] == path).unwrap();
        assert_eq!(op["mode"], mode, "{path} in the manifest");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A file rewritten keeps no copy of its old content anywhere on the disk: not in the blocks or
/// clusters it gave back, and not in the ext4 journal's log, where the driver copied every block
/// it wrote (found by this test: the journal held the old content after the scrub of freed
/// blocks alone).
#[test]
fn a_rewritten_file_leaves_no_copy_of_its_old_content() {
    use pibake::disk::Image;
    use pibake::fs::ext4::Ext4;
    use pibake::fs::fat::Fat;
    use pibake::fs::{FileOps, Meta};
    let img = Image::open(&fixture("bookworm")).unwrap();
    let old: Vec<u8> = b"OLD-SECRET-".iter().copied().cycle().take(9000).collect();
    let meta = Meta::root(0o600, 1_735_689_600);
    let root = img.root().unwrap().clone();
    let boot = img.boot().unwrap().clone();
    {
        let mut fs = Ext4::open(img.region(&root, true).unwrap(), 1_735_689_600).unwrap();
        fs.write_file("/etc/slack", &old, meta).unwrap();
        fs.write_file("/etc/slack", b"new", meta).unwrap();
        let mut fat = Fat::open(img.region(&boot, true).unwrap(), 1_735_689_600).unwrap();
        fat.write_file("/slack.txt", &old, meta).unwrap();
        fat.write_file("/slack.txt", b"new", meta).unwrap();
    }
    pibake::scrub::zero_freed(&img).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut found = Vec::new();
    let mut at = 0;
    while at < img.disk.len() {
        let n = (img.disk.len() - at).min(buf.len() as u64) as usize;
        img.disk.read_at(at, &mut buf[..n]).unwrap();
        if let Some(i) = buf[..n].windows(11).position(|w| w == b"OLD-SECRET-") {
            found.push(at + i as u64);
        }
        at += n as u64;
    }
    assert!(found.is_empty(), "old content at {found:?}");
}
