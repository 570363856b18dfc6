//! One cache, several pibake processes: they share one download, `cache clean` waits for the
//! builds using the cache instead of removing files from under them, a killed process holds
//! nothing up, and `cache verify` drops what is damaged so the next run fetches it again.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::pibake_in;
use crate::common_http::{Faults, Server, image, options, sha, xz};
use pibake::acquire;
use pibake::progress::Silent;

const IMG: &str = "/d/base.img.xz";

/// A server with a paced multi-block `.img.xz` (and its `.sha256`): its download takes a second
/// or so, long enough for other processes to start while it runs.
fn serve(len: usize) -> (Server, Vec<u8>) {
    let server = Server::start();
    let raw = image(len, 11);
    let z = xz(&raw);
    server.put_with(
        IMG,
        z.clone(),
        Faults {
            paced: true,
            ..Faults::default()
        },
    );
    server.put(
        &format!("{IMG}.sha256"),
        format!("{}  base.img.xz\n", sha(&z)).into_bytes(),
    );
    (server, raw)
}

/// `pibake fetch URL` on `cache`, its output kept.
fn fetch(cache: &Path, url: &str) -> Child {
    pibake_in(cache)
        .args(["fetch", url])
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, what: &str) -> (String, String) {
    let o = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{what} failed:\n{out}\n{err}");
    (out, err)
}

/// Wait until `path` exists (a download has started writing), or fail after 20 s.
fn wait_for(path: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !path() {
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn partial_exists(cache: &Path) -> bool {
    std::fs::read_dir(cache.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "part"))
        })
        .unwrap_or(false)
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

/// Four processes fetch one URL at once: one GET, every one succeeds with the same verified image.
#[test]
fn processes_fetching_one_url_share_one_download() {
    let (server, raw) = serve(8 << 20);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url(IMG);
    let runs: Vec<Child> = (0..4).map(|_| fetch(cache.path(), &url)).collect();
    let mut paths = Vec::new();
    let mut waited = 0;
    for (i, r) in runs.into_iter().enumerate() {
        let (out, err) = finish(r, &format!("fetch {i}"));
        paths.push(PathBuf::from(out.trim()));
        waited += usize::from(err.contains("waiting for another pibake to finish"));
    }
    assert_eq!(server.gets(IMG).len(), 1, "{:?}", server.gets(IMG));
    assert!(waited >= 1, "the others say they wait");
    for p in &paths {
        assert_eq!(p, &paths[0]);
    }
    assert!(std::fs::read(&paths[0]).unwrap() == raw);
}

/// `cache clean` started while a fetch downloads waits for it, says so, and only then removes;
/// the fetch completes untouched.
#[test]
fn cache_clean_waits_for_the_processes_using_the_cache() {
    let (server, raw) = serve(12 << 20);
    let cache = tempfile::tempdir().unwrap();
    let run = fetch(cache.path(), &server.url(IMG));
    wait_for(|| partial_exists(cache.path()), "the download starts");
    let clean = pibake_in(cache.path())
        .args(["cache", "clean"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut clean = clean;
    assert!(
        clean.try_wait().unwrap().is_none(),
        "clean must wait while a fetch is running"
    );
    let (out, _) = finish(run, "fetch");
    // The fetch returned a complete, verified image: nothing was removed from under it.
    let image = PathBuf::from(out.trim());
    let got = std::fs::read(&image);
    let (cleaned, err) = finish(clean, "cache clean");
    assert!(
        err.contains("waiting for another pibake to finish: the builds using this cache"),
        "{err}"
    );
    assert!(cleaned.contains("removed"), "{cleaned}");
    // Either the fetch's own read raced clean (it may have been removed since), or it is whole.
    if let Ok(bytes) = got {
        assert!(bytes == raw);
    }
    assert_eq!(files_in(&cache.path().join("images")), 0, "clean ran after");
}

/// A fetch killed mid-download holds nothing: clean proceeds at once, and the next fetch
/// succeeds with the right bytes.
#[test]
fn a_killed_process_holds_up_neither_clean_nor_the_next_fetch() {
    let (server, raw) = serve(12 << 20);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url(IMG);
    let mut run = fetch(cache.path(), &url);
    wait_for(|| partial_exists(cache.path()), "the download starts");
    // A second fetch is queued behind the first one's download lock.
    let waiter = fetch(cache.path(), &url);
    std::thread::sleep(Duration::from_millis(100));
    run.kill().unwrap();
    run.wait().unwrap();
    let (out, _) = finish(waiter, "the waiting fetch");
    assert!(std::fs::read(out.trim()).unwrap() == raw);
    let start = Instant::now();
    let o = pibake_in(cache.path())
        .args(["cache", "clean"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("waiting"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `cache verify` keeps what is sound, drops a damaged download, a damaged image and a file a
/// killed process left without its record; the next run fetches and decodes again.
#[test]
fn cache_verify_drops_what_is_damaged_and_the_next_run_recovers() {
    let server = Server::start();
    let raw = image(3 << 20, 5);
    let z = xz(&raw);
    server.put(IMG, z.clone());
    server.put(
        &format!("{IMG}.sha256"),
        format!("{}  base.img.xz\n", sha(&z)).into_bytes(),
    );
    let cache = tempfile::tempdir().unwrap();
    let o = options(cache.path(), server.url("/no-list.json"));
    let url = server.url(IMG);
    let a = acquire::resolve(&url, &o, &Silent).unwrap();
    assert!(std::fs::read(&a.image).unwrap() == raw);

    let verify = |what: &str| {
        let out = pibake_in(cache.path())
            .args(["cache", "verify"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{what}: {text}");
        text
    };
    let sound = verify("sound cache");
    assert!(sound.contains("2 good, 0 removed"), "{sound}");

    // Damage both entries the way a failing disk would, and leave an orphan as a kill between
    // renaming a file in and writing its record would.
    let download = only_file(&cache.path().join("downloads"), "xz");
    flip_byte(&download, 1000);
    flip_byte(&a.image, 2 << 20);
    let orphan = cache
        .path()
        .join("downloads")
        .join(format!("{}.xz", "0".repeat(64)));
    std::fs::write(&orphan, b"half").unwrap();
    let text = verify("damaged cache");
    assert!(text.contains("0 good, 3 removed"), "{text}");
    assert!(text.contains("damaged: SHA-256"), "{text}");
    assert!(text.contains("no record"), "{text}");
    assert!(!orphan.exists() && !download.exists() && !a.image.exists());

    let b = acquire::resolve(&url, &o, &Silent).unwrap();
    assert!(!b.from_cache);
    assert!(std::fs::read(&b.image).unwrap() == raw);
    assert_eq!(server.gets(IMG).len(), 2);
}

fn only_file(dir: &Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
}
