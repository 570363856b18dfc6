//! Downloads from a URL: verification sources, resume, restarts, retries and failures.

use crate::common_http;

use common_http::{Faults, Server, image, options, sha, xz};
use pibake::acquire::{self, AcquireError, VerifyMethod};
use pibake::progress::Silent;

const IMG: &str = "/d/base.img.xz";

fn setup(faults: Faults) -> (Server, Vec<u8>, Vec<u8>, tempfile::TempDir) {
    let server = Server::start();
    let raw = image(4 << 20, 7);
    let z = xz(&raw);
    server.put_with(IMG, z.clone(), faults);
    server.put(
        &format!("{IMG}.sha256"),
        format!("{}  base.img.xz\n", sha(&z)).into_bytes(),
    );
    (server, raw, z, tempfile::tempdir().unwrap())
}

fn opts(server: &Server, cache: &tempfile::TempDir) -> acquire::AcquireOptions {
    options(cache.path(), server.url("/no-list.json"))
}

#[test]
fn sidecar_verifies_and_second_run_does_not_download() {
    let (server, raw, z, cache) = setup(Faults::default());
    let o = opts(&server, &cache);
    let a = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap();
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    assert_eq!(a.verification.method, VerifyMethod::Sidecar);
    assert_eq!(a.compressed_sha256.as_deref(), Some(sha(&z).as_str()));
    assert_eq!(a.image_sha256, sha(&raw));
    let b = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap();
    assert!(b.from_cache);
    assert_eq!(server.gets(IMG).len(), 1);
}

#[test]
fn dropped_connection_is_resumed_with_range() {
    let (server, raw, _z, cache) = setup(Faults {
        drop_after: Some(300_000),
        drop_times: 4,
        ..Faults::default()
    });
    let a = acquire::resolve(&server.url(IMG), &opts(&server, &cache), &Silent).unwrap();
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    let gets = server.gets(IMG);
    assert_eq!(gets.len(), 5, "{gets:?}");
    assert_eq!(gets[0].range, None);
    for (i, g) in gets.iter().enumerate().skip(1) {
        assert_eq!(
            g.range.as_deref(),
            Some(format!("bytes={}-", 300_000 * i).as_str())
        );
        assert!(g.if_range.is_some(), "If-Range must guard the resume");
    }
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let (server, raw, _z, cache) = setup(Faults {
        drop_after: Some(200_000),
        drop_times: 1,
        ignore_range: true,
        ..Faults::default()
    });
    let a = acquire::resolve(&server.url(IMG), &opts(&server, &cache), &Silent).unwrap();
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    let gets = server.gets(IMG);
    assert_eq!(gets.len(), 2);
    assert!(gets[1].range.is_some());
}

#[test]
fn interrupted_run_is_resumed_by_the_next_run() {
    let (server, raw, _z, cache) = setup(Faults {
        drop_after: Some(500_000),
        drop_times: 1,
        ..Faults::default()
    });
    let mut o = opts(&server, &cache);
    o.retries = 0;
    let e = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::Network { .. }), "{e}");
    assert!(!e.is_bad_input());
    let a = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap();
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    let gets = server.gets(IMG);
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=500000-"));
}

#[test]
fn not_found_is_bad_input_without_retries() {
    let server = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(&server, &cache);
    o.sha256 = Some(sha(b"x"));
    let e = acquire::resolve(&server.url("/missing.img.xz"), &o, &Silent).unwrap_err();
    assert!(
        matches!(e, AcquireError::HttpStatus { status: 404, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("404"), "{e}");
    assert!(e.is_bad_input());
    assert_eq!(server.gets("/missing.img.xz").len(), 1);
}

#[test]
fn service_unavailable_then_ok_is_retried() {
    let (server, raw, _z, cache) = setup(Faults {
        fail_first: 2,
        ..Faults::default()
    });
    let a = acquire::resolve(&server.url(IMG), &opts(&server, &cache), &Silent).unwrap();
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    assert_eq!(server.gets(IMG).len(), 3);
}

#[test]
fn persistent_server_error_gives_up_with_a_clear_message() {
    let (server, _raw, _z, cache) = setup(Faults {
        status: Some(500),
        ..Faults::default()
    });
    let e = acquire::resolve(&server.url(IMG), &opts(&server, &cache), &Silent).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            AcquireError::HttpStatus {
                status: 500,
                attempts: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("500") && msg.contains("4 attempts"), "{msg}");
    assert!(!e.is_bad_input());
    assert_eq!(server.gets(IMG).len(), 4);
}

#[test]
fn no_checksum_is_refused_unless_insecure() {
    let (server, raw, _z, cache) = setup(Faults::default());
    server.remove(&format!("{IMG}.sha256"));
    let mut o = opts(&server, &cache);
    let e = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::Unverifiable { .. }), "{e}");
    assert!(e.is_bad_input());
    assert!(
        server.gets(IMG).is_empty(),
        "nothing is downloaded before refusing"
    );
    o.insecure_no_verify = true;
    let a = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap();
    assert_eq!(a.verification.method, VerifyMethod::Insecure);
    assert!(!a.verification.download_sha256_checked);
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
}

#[test]
fn sha256_option_is_checked_and_a_bad_download_deleted() {
    let (server, raw, z, cache) = setup(Faults::default());
    let mut o = opts(&server, &cache);
    o.sha256 = Some(sha(b"not it"));
    let e = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&sha(b"not it")) && msg.contains(&sha(&z)),
        "{msg}"
    );
    assert!(e.is_bad_input());
    assert_eq!(
        std::fs::read_dir(cache.path().join("downloads"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(cache.path().join("tmp")).unwrap().count(),
        0
    );
    o.sha256 = Some(sha(&z).to_uppercase());
    let a = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap();
    assert_eq!(a.verification.method, VerifyMethod::Sha256Option);
    assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    let bad = acquire::AcquireOptions {
        sha256: Some("abc".into()),
        ..o
    };
    let e = acquire::resolve(&server.url(IMG), &bad, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::BadSha256 { .. }), "{e}");
}

#[test]
fn full_disk_names_the_cache_dir() {
    let (server, _raw, _z, cache) = setup(Faults::default());
    let mut o = opts(&server, &cache);
    o.fail_writes_after = Some(1 << 20);
    let e = acquire::resolve(&server.url(IMG), &o, &Silent).unwrap_err();
    assert!(matches!(e, AcquireError::DiskFull { .. }), "{e}");
    assert!(
        e.to_string().contains(&cache.path().display().to_string()),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(cache.path().join("downloads"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn unreachable_server_is_an_internal_failure_after_retries() {
    // Bind then drop a listener to get a port on 127.0.0.1 with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(cache.path(), String::new());
    o.sha256 = Some(sha(b"x"));
    o.retries = 1;
    let e =
        acquire::resolve(&format!("http://127.0.0.1:{port}/a.img.xz"), &o, &Silent).unwrap_err();
    assert!(
        matches!(e, AcquireError::Network { attempts: 2, .. }),
        "{e}"
    );
    assert!(!e.is_bad_input());
}

/// Found by a user: three fetches of one URL on one cache downloaded it three times, and two
/// failed when the first renamed the shared partial file from under them. Now one downloads while
/// the others wait for its lock, then take what it cached.
#[test]
fn simultaneous_downloads_of_one_url_share_one_download() {
    let (server, raw, _z, cache) = setup(Faults {
        paced: true,
        ..Faults::default()
    });
    let o = opts(&server, &cache);
    let url = server.url(IMG);
    let steps = Steps::default();
    let results: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| acquire::resolve(&url, &o, &steps)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("no panic"))
            .collect()
    });
    for r in results {
        let a = r.expect("every simultaneous run succeeds");
        assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    }
    assert_eq!(server.gets(IMG).len(), 1, "{:?}", server.gets(IMG));
    let steps = steps.0.lock().unwrap();
    let decodes = steps.iter().filter(|s| s.starts_with("decode ")).count();
    assert_eq!(decodes, 1, "the base is decoded once: {steps:?}");
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("waiting for another pibake")),
        "a waiter says what it waits for: {steps:?}"
    );
}

/// Records the name of every step begun, from any thread.
#[derive(Default)]
struct Steps(std::sync::Mutex<Vec<String>>);

impl pibake::progress::Progress for Steps {
    fn begin(&self, what: &str, _total: Option<u64>) {
        self.0.lock().unwrap().push(what.to_string());
    }
    fn set(&self, _done: u64) {}
    fn end(&self) {}
}

/// A download lock dies with its holder: a run waiting behind a process that is then killed
/// with SIGKILL goes on and succeeds. The holder is flock(1), which takes the same kind of lock.
#[test]
fn a_killed_holder_leaves_no_lock_behind() {
    let (server, raw, _z, cache) = setup(Faults::default());
    let o = opts(&server, &cache);
    let url = server.url(IMG);
    let locks = cache.path().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let lock = locks.join(format!("{}.lock", &sha(url.as_bytes())[..32]));
    // -o: flock itself holds the lock, not the sleep it runs, so killing flock releases it.
    let mut holder = std::process::Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    while !lock.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::thread::scope(|s| {
        let run = s.spawn(|| acquire::resolve(&url, &o, &Silent));
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(
            !run.is_finished(),
            "the run must wait while the lock is held"
        );
        assert!(server.gets(IMG).is_empty());
        holder.kill().unwrap();
        holder.wait().unwrap();
        let a = run.join().expect("no panic").expect("the run goes on");
        assert_eq!(std::fs::read(&a.image).unwrap(), raw);
    });
}
