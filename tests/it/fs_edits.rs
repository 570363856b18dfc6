//! Random sequences of edits on every fixture's ext4 root and FAT boot partitions, each judged by
//! `e2fsck -fn` / `fsck.vfat -n` and by independent readers (ext4-view, debugfs, mtools) against
//! the test's own model of the tree.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use pibake::disk::{Image, Region};
use pibake::fs::ext4::Ext4;
use pibake::fs::fat::Fat;
use pibake::fs::{FileOps, FsError, Meta};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const CLOCK: i64 = 1_735_689_600; // 2025-01-01, what every edit is stamped with
const DIRS: [&str; 4] = ["/pb", "/pb/a", "/pb/a/b", "/etc/pb"];
const NAMES: [&str; 4] = ["f1", "f2", "f3", "l1"];
const SIZES: [usize; 11] = [
    0,
    1,
    59,
    60,
    61,
    4095,
    4096,
    4097,
    50_000,
    (1 << 20) + 3,
    17 << 20,
];

#[derive(Debug, Clone)]
enum Op {
    Write { path: usize, size: usize, seed: u8 },
    MkdirDeep { depth: usize },
    Symlink { path: usize, long: bool },
    Remove { path: usize },
    Chmod { path: usize, mode: u32 },
    Chown { path: usize, uid: u32, gid: u32 },
}

fn path_of(i: usize) -> String {
    format!(
        "{}/{}",
        DIRS[i / NAMES.len() % DIRS.len()],
        NAMES[i % NAMES.len()]
    )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let path = 0..DIRS.len() * NAMES.len();
    // The 17 MiB size is drawn rarely: it dominates the run time.
    let size = prop_oneof![10 => 0..SIZES.len() - 1, 1 => Just(SIZES.len() - 1)];
    prop_oneof![
        6 => (path.clone(), size, any::<u8>()).prop_map(|(path, size, seed)| Op::Write { path, size, seed }),
        1 => (1..12usize).prop_map(|depth| Op::MkdirDeep { depth }),
        2 => (path.clone(), any::<bool>()).prop_map(|(path, long)| Op::Symlink { path, long }),
        2 => path.clone().prop_map(|path| Op::Remove { path }),
        1 => (path.clone(), prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o4755), Just(0o1777)]).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (path, 0..3000u32, 0..3000u32).prop_map(|(path, uid, gid)| Op::Chown { path, uid, gid }),
    ]
}

fn data(size: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Link {
        target: String,
        uid: u32,
        gid: u32,
    },
}

/// The test's own idea of what pibake created; paths outside it come from the fixture.
#[derive(Default)]
struct Model(BTreeMap<String, Node>);

impl Model {
    fn parent(p: &str) -> &str {
        &p[..p.rfind('/').unwrap()]
    }

    fn ensure_dirs(&mut self, dir: &str) {
        let mut so_far = String::new();
        for part in dir.split('/').filter(|s| !s.is_empty()) {
            so_far.push('/');
            so_far.push_str(part);
            if so_far != "/etc" {
                self.0.entry(so_far.clone()).or_insert(Node::Dir {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                });
            }
        }
    }

    fn has_children(&self, p: &str) -> bool {
        let prefix = format!("{p}/");
        self.0.keys().any(|k| k.starts_with(&prefix))
    }

    /// Apply `op` to the model; returns whether pibake should accept it.
    fn apply(&mut self, op: &Op) -> bool {
        match op {
            Op::Write { path, size, seed } => {
                let p = path_of(*path);
                if !self.dirs_ok(Self::parent(&p)) {
                    return false;
                }
                self.ensure_dirs(Self::parent(&p));
                match self.0.get(&p) {
                    Some(Node::Dir { .. }) | Some(Node::Link { .. }) => false,
                    _ => {
                        self.0.insert(
                            p,
                            Node::File {
                                data: data(SIZES[*size], *seed),
                                mode: 0o640,
                                uid: 1000,
                                gid: 1000,
                            },
                        );
                        true
                    }
                }
            }
            Op::MkdirDeep { depth } => {
                let p = deep(*depth);
                self.ensure_dirs(&p);
                true
            }
            Op::Symlink { path, long } => {
                let p = path_of(*path);
                if !self.dirs_ok(Self::parent(&p)) {
                    return false;
                }
                self.ensure_dirs(Self::parent(&p));
                if matches!(self.0.get(&p), Some(Node::Dir { .. })) {
                    return false;
                }
                self.0.insert(
                    p.clone(),
                    Node::Link {
                        target: link_target(&p, *long),
                        uid: 0,
                        gid: 0,
                    },
                );
                true
            }
            Op::Remove { path } => {
                let p = path_of(*path);
                match self.0.get(&p) {
                    None => false,
                    Some(Node::Dir { .. }) if self.has_children(&p) => false,
                    Some(_) => {
                        self.0.remove(&p);
                        true
                    }
                }
            }
            Op::Chmod { path, mode } => match self.0.get_mut(&path_of(*path)) {
                Some(Node::File { mode: m, .. }) | Some(Node::Dir { mode: m, .. }) => {
                    *m = *mode;
                    true
                }
                Some(Node::Link { .. }) => true,
                None => false,
            },
            Op::Chown { path, uid, gid } => match self.0.get_mut(&path_of(*path)) {
                Some(Node::File { uid: u, gid: g, .. })
                | Some(Node::Dir { uid: u, gid: g, .. })
                | Some(Node::Link { uid: u, gid: g, .. }) => {
                    (*u, *g) = (*uid, *gid);
                    true
                }
                None => false,
            },
        }
    }

    /// Every ancestor of `dir` that the model knows is a directory (not a file or link).
    fn dirs_ok(&self, dir: &str) -> bool {
        let mut so_far = String::new();
        for part in dir.split('/').filter(|s| !s.is_empty()) {
            so_far.push('/');
            so_far.push_str(part);
            if matches!(
                self.0.get(&so_far),
                Some(Node::File { .. }) | Some(Node::Link { .. })
            ) {
                return false;
            }
        }
        true
    }
}

fn deep(depth: usize) -> String {
    (0..depth).fold("/pb/deep".to_string(), |acc, i| format!("{acc}/d{i}"))
}

fn link_target(p: &str, long: bool) -> String {
    // Dangling on purpose: the model need not follow links, and both fast (< 60 bytes) and slow
    // symlinks are covered.
    if long {
        format!("/nonexistent/{}/{}", "x".repeat(120), p.replace('/', "_"))
    } else {
        format!("../t{}", p.len())
    }
}

/// Apply `op` through pibake; Ok(true) if accepted.
fn run_op(fs: &mut dyn FileOps, op: &Op) -> Result<bool, String> {
    let r: Result<(), FsError> = match op {
        Op::Write { path, size, seed } => {
            let p = path_of(*path);
            fs.mkdir_p(Model::parent(&p), Meta::root(0o755, CLOCK))
                .and_then(|_| {
                    fs.write_file(
                        &p,
                        &data(SIZES[*size], *seed),
                        Meta {
                            mode: 0o640,
                            uid: 1000,
                            gid: 1000,
                            mtime: CLOCK,
                        },
                    )
                })
        }
        Op::MkdirDeep { depth } => fs.mkdir_p(&deep(*depth), Meta::root(0o755, CLOCK)),
        Op::Symlink { path, long } => {
            let p = path_of(*path);
            fs.mkdir_p(Model::parent(&p), Meta::root(0o755, CLOCK))
                .and_then(|_| fs.symlink(&p, &link_target(&p, *long), Meta::root(0o777, CLOCK)))
        }
        Op::Remove { path } => fs.remove(&path_of(*path)),
        Op::Chmod { path, mode } => {
            let p = path_of(*path);
            match fs.stat(&p) {
                Ok(st) => fs.set_meta(
                    &p,
                    Meta {
                        mode: *mode,
                        uid: st.uid,
                        gid: st.gid,
                        mtime: CLOCK,
                    },
                ),
                Err(e) => Err(e),
            }
        }
        Op::Chown { path, uid, gid } => {
            let p = path_of(*path);
            match fs.stat(&p) {
                Ok(st) => fs.set_meta(
                    &p,
                    Meta {
                        mode: st.mode,
                        uid: *uid,
                        gid: *gid,
                        mtime: CLOCK,
                    },
                ),
                Err(e) => Err(e),
            }
        }
    };
    match r {
        Ok(()) => Ok(true),
        Err(FsError::Ext4 { .. }) | Err(FsError::Io(_)) => Err(format!("{op:?}: {r:?}")),
        Err(_) => Ok(false),
    }
}

/// `debugfs stat` fields: (type, mode, uid, gid, links).
fn debugfs_stat(fs: &Path, p: &str) -> Option<(String, u32, u32, u32, u32)> {
    let out = debugfs(fs, &format!("stat \"{p}\""));
    let first = out.lines().next()?;
    let kind = first
        .split("Type:")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_string();
    let mode =
        u32::from_str_radix(first.split("Mode:").nth(1)?.split_whitespace().next()?, 8).ok()?;
    let user_line = out.lines().find(|l| l.starts_with("User:"))?;
    let uid = user_line.split_whitespace().nth(1)?.parse().ok()?;
    let gid = user_line
        .split("Group:")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let links = out
        .lines()
        .find(|l| l.starts_with("Links:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((kind, mode, uid, gid, links))
}

/// Things the fixture had that no edit names: they must come through byte-identical.
const UNTOUCHED: [&str; 5] = [
    "/usr/bin/ping",
    "/etc/hostname",
    "/etc/shadow",
    "/usr/lib/os-release",
    "/etc/fstab",
];

fn untouched_fingerprint(fs: &Path) -> Vec<String> {
    UNTOUCHED
        .iter()
        .map(|p| {
            let stat = debugfs(fs, &format!("stat \"{p}\""));
            // Everything but the inode checksum line, which covers nothing we care about twice.
            let stat: String = stat
                .lines()
                .filter(|l| !l.contains("checksum"))
                .collect::<Vec<_>>()
                .join("\n");
            let xattrs = debugfs(fs, &format!("ea_list \"{p}\""));
            let body = sha_hex(&debugfs_cat(fs, p));
            format!("{stat}\n{xattrs}\n{body}")
        })
        .collect()
}

fn sha_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

fn check_ext4(release: &str, region: &Region, model: &Model, before: &[String]) {
    let tmp = tempfile::tempdir().unwrap();
    let fsimg = tmp.path().join("root.ext4");
    dump(region, &fsimg);
    assert_e2fsck_clean(&fsimg);

    let view = ext4_view::Ext4::load_from_path(&fsimg)
        .unwrap_or_else(|e| panic!("{release}: ext4-view cannot load: {e}"));
    for (p, node) in &model.0 {
        let meta = view
            .symlink_metadata(p.as_str())
            .unwrap_or_else(|e| panic!("{release}: ext4-view {p}: {e}"));
        let ds =
            debugfs_stat(&fsimg, p).unwrap_or_else(|| panic!("{release}: debugfs cannot stat {p}"));
        let perm = u32::from(meta.mode()) & 0o7777;
        match node {
            Node::File {
                data,
                mode,
                uid,
                gid,
            } => {
                assert!(
                    meta.file_type().is_regular_file(),
                    "{release} {p}: not a file"
                );
                assert_eq!(
                    (perm, meta.uid(), meta.gid()),
                    (*mode, *uid, *gid),
                    "{release} {p}: ext4-view meta"
                );
                assert_eq!(
                    (ds.0.as_str(), ds.1, ds.2, ds.3),
                    ("regular", *mode, *uid, *gid),
                    "{release} {p}: debugfs meta"
                );
                assert_eq!(meta.modified().seconds(), CLOCK, "{release} {p}: mtime");
                let got = view.read(p.as_str()).unwrap();
                assert!(
                    got == *data,
                    "{release} {p}: ext4-view content differs ({} vs {} bytes)",
                    got.len(),
                    data.len()
                );
                assert!(
                    debugfs_cat(&fsimg, p) == *data,
                    "{release} {p}: debugfs content differs"
                );
            }
            Node::Dir { mode, uid, gid } => {
                assert!(meta.is_dir(), "{release} {p}: not a directory");
                assert_eq!(
                    (perm, meta.uid(), meta.gid()),
                    (*mode, *uid, *gid),
                    "{release} {p}: dir meta"
                );
                assert_eq!(ds.0, "directory");
            }
            Node::Link { target, uid, gid } => {
                assert!(meta.is_symlink(), "{release} {p}: not a symlink");
                assert_eq!(
                    view.read_link(p.as_str()).unwrap().to_str().unwrap(),
                    target.as_str(),
                    "{release} {p}: target"
                );
                assert_eq!(
                    (meta.uid(), meta.gid()),
                    (*uid, *gid),
                    "{release} {p}: link owner"
                );
                assert_eq!(ds.0, "symlink");
            }
        }
    }
    // Names the model says are gone must be gone.
    for i in 0..DIRS.len() * NAMES.len() {
        let p = path_of(i);
        if !model.0.contains_key(&p) {
            assert!(
                !view.exists(p.as_str()).unwrap_or(false)
                    || view.symlink_metadata(p.as_str()).is_err(),
                "{release}: {p} should not exist"
            );
        }
    }
    assert_eq!(
        untouched_fingerprint(&fsimg),
        before,
        "{release}: untouched files changed"
    );
}

#[test]
fn random_ext4_edits_stay_clean_and_read_back_independently() {
    let cases: u32 = std::env::var("PIBAKE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for release in RELEASES {
        let img_path = fixture(release);
        let e = expect(release);
        let tmp = tempfile::tempdir().unwrap();
        let orig = tmp.path().join("orig.ext4");
        let (off, len) = part(&e, 2);
        extract(&img_path, off, len, &orig);
        let before = untouched_fingerprint(&orig);
        let base_sha = sha256(&img_path);

        let mut runner = TestRunner::new(Config {
            cases,
            max_shrink_iters: 32,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&prop::collection::vec(op_strategy(), 5..30), |ops| {
                let image = Image::open(&img_path).unwrap();
                let root = image.root().unwrap().clone();
                let mut fs = Ext4::open(image.region(&root, true).unwrap(), CLOCK).unwrap();
                let mut model = Model::default();
                for op in &ops {
                    let want = model_clone_apply(&mut model, op);
                    let got = run_op(&mut fs, op).map_err(TestCaseError::fail)?;
                    prop_assert_eq!(
                        got,
                        want,
                        "{}: {:?} accepted={} but the model says {}",
                        release,
                        op,
                        got,
                        want
                    );
                }
                check_ext4(
                    release,
                    &image.region(&root, false).unwrap(),
                    &model,
                    &before,
                );
                Ok(())
            })
            .unwrap();
        assert_eq!(
            sha256(&img_path),
            base_sha,
            "{release}: the base image was modified"
        );
    }
}

/// The model applies an op only when pibake should accept it (rejected ops change nothing).
fn model_clone_apply(model: &mut Model, op: &Op) -> bool {
    let mut trial = Model(model.0.clone());
    let ok = trial.apply(op);
    if ok {
        *model = trial;
    }
    ok
}

#[test]
fn a_directory_grown_to_thousands_of_entries_stays_indexed_and_complete() {
    let img_path = fixture("bookworm");
    let image = Image::open(&img_path).unwrap();
    let root = image.root().unwrap().clone();
    let mut fs = Ext4::open(image.region(&root, true).unwrap(), CLOCK).unwrap();
    let before: Vec<String> = fs
        .list("/etc")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let mut added = Vec::new();
    for i in 0..3000 {
        let name = format!("pibake-entry-with-a-longish-name-{i:05}.conf");
        fs.write_file(
            &format!("/etc/{name}"),
            format!("{i}\n").as_bytes(),
            Meta::root(0o644, CLOCK),
        )
        .unwrap();
        added.push(name);
    }
    let tmp = tempfile::tempdir().unwrap();
    let fsimg = tmp.path().join("root.ext4");
    dump(&image.region(&root, false).unwrap(), &fsimg);
    assert_e2fsck_clean(&fsimg);
    let htree = debugfs(&fsimg, "htree /etc");
    assert!(
        htree.contains("Root node dump") || htree.contains("Number of entries"),
        "/etc is not htree-indexed:\n{}",
        &htree[..htree.len().min(500)]
    );
    let view = ext4_view::Ext4::load_from_path(&fsimg).unwrap();
    let mut names: Vec<String> = view
        .read_dir("/etc")
        .unwrap()
        .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    let mut want: Vec<String> = before.into_iter().chain(added.iter().cloned()).collect();
    want.sort();
    assert_eq!(names, want);
    for (i, name) in added.iter().enumerate().step_by(97) {
        assert_eq!(
            view.read_to_string(format!("/etc/{name}").as_str())
                .unwrap(),
            format!("{i}\n")
        );
        assert_eq!(
            debugfs_cat(&fsimg, &format!("/etc/{name}")),
            format!("{i}\n").into_bytes()
        );
    }
}

#[derive(Debug, Clone)]
enum FatOp {
    Write { name: usize, size: usize, seed: u8 },
    Mkdir { name: usize },
    Remove { name: usize },
}

const FAT_PATHS: [&str; 8] = [
    "/ssh",
    "/userconf.txt",
    "/overlays/pibake-some-long-overlay-name.dtbo",
    "/pibake/NESTED/Mixed Case Name.txt",
    "/pibake/8x3.TXT",
    "/pibake/deeper/still/file",
    "/pibake/deeper",
    "/firstrun.sh",
];
const FAT_SIZES: [usize; 6] = [0, 1, 511, 2048, 70_000, 3 << 20];

fn fat_op_strategy() -> impl Strategy<Value = FatOp> {
    prop_oneof![
        5 => (0..FAT_PATHS.len(), 0..FAT_SIZES.len(), any::<u8>()).prop_map(|(name, size, seed)| FatOp::Write { name, size, seed }),
        1 => (0..FAT_PATHS.len()).prop_map(|name| FatOp::Mkdir { name }),
        2 => (0..FAT_PATHS.len()).prop_map(|name| FatOp::Remove { name }),
    ]
}

#[test]
fn random_fat_edits_stay_clean_and_read_back_with_mtools() {
    let cases: u32 = std::env::var("PIBAKE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for release in RELEASES {
        let img_path = fixture(release);
        let mut runner = TestRunner::new(Config {
            cases,
            max_shrink_iters: 32,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&prop::collection::vec(fat_op_strategy(), 3..20), |ops| {
                let image = Image::open(&img_path).unwrap();
                let boot = image.boot().unwrap().clone();
                let mut fs = Fat::open(image.region(&boot, true).unwrap(), CLOCK).unwrap();
                // Model: path -> Some(content) for files, None for directories.
                let mut model: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
                for op in &ops {
                    match op {
                        FatOp::Write { name, size, seed } => {
                            let p = FAT_PATHS[*name];
                            let parent = &p[..p.rfind('/').unwrap()];
                            let blocked = model.iter().any(|(k, v)| {
                                v.is_some() && (parent == k || parent.starts_with(&format!("{k}/")))
                            }) || matches!(model.get(p), Some(None));
                            let r = if parent.is_empty() {
                                Ok(())
                            } else {
                                fs.mkdir_p(parent, Meta::root(0o755, CLOCK))
                            }
                            .and_then(|_| {
                                fs.write_file(
                                    p,
                                    &data(FAT_SIZES[*size], *seed),
                                    Meta::root(0o644, CLOCK),
                                )
                            });
                            prop_assert_eq!(r.is_ok(), !blocked, "{} {:?}: {:?}", release, op, r);
                            if r.is_ok() {
                                let mut d = String::new();
                                for part in parent.split('/').filter(|s| !s.is_empty()) {
                                    d.push('/');
                                    d.push_str(part);
                                    model.entry(d.clone()).or_insert(None);
                                }
                                model.insert(p.to_string(), Some(data(FAT_SIZES[*size], *seed)));
                            }
                        }
                        FatOp::Mkdir { name } => {
                            let p = FAT_PATHS[*name];
                            let blocked = model.iter().any(|(k, v)| {
                                v.is_some() && (p == k || p.starts_with(&format!("{k}/")))
                            });
                            let r = fs.mkdir_p(p, Meta::root(0o755, CLOCK));
                            prop_assert_eq!(r.is_ok(), !blocked, "{} {:?}: {:?}", release, op, r);
                            if !blocked {
                                let mut d = String::new();
                                for part in p.split('/').filter(|s| !s.is_empty()) {
                                    d.push('/');
                                    d.push_str(part);
                                    model.entry(d.clone()).or_insert(None);
                                }
                            }
                        }
                        FatOp::Remove { name } => {
                            let p = FAT_PATHS[*name];
                            let prefix = format!("{p}/");
                            let ok = model.contains_key(p)
                                && !model.keys().any(|k| k.starts_with(&prefix));
                            let r = fs.remove(p);
                            prop_assert_eq!(r.is_ok(), ok, "{} {:?}: {:?}", release, op, r);
                            if ok {
                                model.remove(p);
                            }
                        }
                    }
                }
                let tmp = tempfile::tempdir().unwrap();
                let fat = tmp.path().join("boot.fat");
                dump(&image.region(&boot, false).unwrap(), &fat);
                assert_fsck_vfat_clean(&fat);
                for (p, content) in &model {
                    if let Some(c) = content {
                        prop_assert!(mtype(&fat, p) == *c, "{}: mtype {} differs", release, p);
                    }
                }
                // The fixture's own files are untouched.
                let orig = tmp.path().join("orig.fat");
                let (off, len) = part(&expect(release), 1);
                extract(&img_path, off, len, &orig);
                prop_assert_eq!(mtype(&fat, "/config.txt"), mtype(&orig, "/config.txt"));
                Ok(())
            })
            .unwrap();
    }
}
