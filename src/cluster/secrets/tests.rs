use super::*;
use std::sync::Arc;

#[cfg(unix)]
fn mode_of(p: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).expect("metadata").permissions())
        & 0o7777
}

#[cfg(unix)]
fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod");
}

#[test]
fn open_creates_the_directory_private() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("secrets");
    let s = Secrets::open(&dir).expect("created");
    assert_eq!(s.dir(), dir);
    assert!(dir.is_dir());
    #[cfg(unix)]
    assert_eq!(mode_of(&dir), 0o700);
    Secrets::open(&dir).expect("opened again");
}

#[test]
fn open_does_not_create_parents_or_accept_a_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = Secrets::open(&tmp.path().join("a/b")).expect_err("no parents");
    assert!(matches!(e, SecretsError::Io(_)), "{e:?}");
    assert!(!tmp.path().join("a").exists());
    let file = tmp.path().join("file");
    fs::write(&file, "x").expect("write");
    let e = Secrets::open(&file).expect_err("a file");
    assert!(matches!(e, SecretsError::NotADirectory(_)), "{e:?}");
    assert!(e.to_string().contains("file"), "{e}");
}

#[cfg(unix)]
#[test]
fn open_refuses_a_directory_others_can_enter() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("open");
    fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o755);
    let e = Secrets::open(&dir).expect_err("0755");
    assert!(
        matches!(e, SecretsError::OpenDirectory { mode: 0o755, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("0755"), "{e}");
    let hint = e.hint().expect("a hint");
    assert!(
        hint.contains(&format!("chmod 700 {}", dir.display())),
        "{hint}"
    );
    assert_eq!(e.kind(), Kind::BadInput);
}

#[test]
fn key_is_made_once_then_reused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Secrets::open(&tmp.path().join("s")).expect("open");
    let (k1, created) = s.key("cluster", "cluster@lab").expect("new key");
    assert!(created);
    let private = s.dir().join("cluster");
    let public = s.dir().join("cluster.pub");
    #[cfg(unix)]
    assert_eq!(mode_of(&private), 0o600);
    assert_eq!(
        fs::read_to_string(&public).expect("pub"),
        format!("{}\n", k1.public_line())
    );
    assert_eq!(
        fs::read_to_string(&private).expect("private"),
        k1.private_openssh()
    );

    let (k2, created) = s.key("cluster", "another comment").expect("reused");
    assert!(!created);
    assert_eq!(k1, k2);
    assert_eq!(k2.comment(), "cluster@lab", "the stored comment wins");

    // Only the two files, no temporary left behind.
    let mut names: Vec<String> = fs::read_dir(s.dir())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cluster", "cluster.pub"]);
}

#[test]
fn a_missing_or_stale_public_file_is_rewritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Secrets::open(&tmp.path().join("s")).expect("open");
    let (k, _) = s.key("host-a", "a").expect("new key");
    let public = s.dir().join("host-a.pub");
    fs::remove_file(&public).expect("rm");
    s.key("host-a", "a").expect("reused");
    assert_eq!(
        fs::read_to_string(&public).expect("pub"),
        format!("{}\n", k.public_line())
    );
    fs::write(&public, "ssh-ed25519 AAAAstale x\n").expect("stale");
    s.key("host-a", "a").expect("reused");
    assert_eq!(
        fs::read_to_string(&public).expect("pub"),
        format!("{}\n", k.public_line())
    );
}

#[test]
fn a_corrupt_key_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Secrets::open(&tmp.path().join("s")).expect("open");
    let path = s.dir().join("host-b");
    let junk =
        "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n";
    write_new(&path, junk.as_bytes(), 0o600).expect("write junk");
    let e = s.key("host-b", "b").expect_err("corrupt");
    assert!(matches!(e, SecretsError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(e.kind(), Kind::BadInput);
    assert_eq!(fs::read_to_string(&path).expect("still there"), junk);
    assert!(!s.dir().join("host-b.pub").exists());

    // Not UTF-8 at all.
    let bin = s.dir().join("host-c");
    write_new(&bin, &[0xff, 0xfe, 0x00, 0x80], 0o600).expect("write binary");
    let e = s.key("host-c", "c").expect_err("binary");
    assert!(matches!(e, SecretsError::Corrupt { .. }), "{e:?}");
    assert_eq!(
        fs::read(&bin).expect("still there"),
        [0xff, 0xfe, 0x00, 0x80]
    );
}

#[cfg(unix)]
#[test]
fn a_key_others_can_read_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Secrets::open(&tmp.path().join("s")).expect("open");
    s.key("host-d", "d").expect("new key");
    let path = s.dir().join("host-d");
    chmod(&path, 0o644);
    let e = s.key("host-d", "d").expect_err("0644");
    assert!(
        matches!(e, SecretsError::OpenKey { mode: 0o644, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("0644"), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn bad_names_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Secrets::open(&tmp.path().join("s")).expect("open");
    for name in ["../x", "a/b", ".hidden", "", "a b", "x.pub", "a\\b", "é"] {
        let e = s.key(name, "c").expect_err(name);
        assert!(matches!(e, SecretsError::BadName { .. }), "{name:?}: {e:?}");
    }
    assert!(s.key(&"a".repeat(101), "c").is_err());
    assert!(!tmp.path().join("x").exists());
    assert_eq!(fs::read_dir(s.dir()).expect("list").count(), 0);
    s.key("host-node01.lab_1", "ok").expect("a good name");
}

#[test]
fn concurrent_callers_get_the_same_new_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(Secrets::open(&tmp.path().join("s")).expect("open"));
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (s, barrier) = (Arc::clone(&s), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let (k, created) = s.key("host-node01", &format!("t{i}")).expect("key");
                (k.fingerprint(), created)
            })
        })
        .collect();
    let results: Vec<(String, bool)> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert!(
        results.iter().all(|(f, _)| *f == results[0].0),
        "{results:?}"
    );
    assert_eq!(results.iter().filter(|(_, c)| *c).count(), 1, "{results:?}");
    let (stored, _) = s.key("host-node01", "later").expect("stored");
    assert_eq!(stored.fingerprint(), results[0].0);
    assert_eq!(fs::read_dir(s.dir()).expect("list").count(), 2);
}
