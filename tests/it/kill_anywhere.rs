//! Kill anywhere: builds of every route and output format, with the base downloaded from a
//! 127.0.0.1 server or read from a local file, are killed with SIGKILL at points spread over
//! their run (during the download, the decode into the cache, the edit, the output write, the
//! bmap and manifest, the flash). After each kill, no output exists under its final name unless
//! it is complete and correct; after all of them, `cache verify` finds nothing damaged, the
//! base is unchanged, and the next build succeeds with the same bytes as a build never
//! interrupted. `PIBAKE_KILL_POINTS` sets the kills per scenario (default 5) for longer soaks.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{fixture, fixture_xz, minimal_recipe, pibake_in, sha256, write_recipe};
use crate::common_http::{Server, sha};

/// One way of building: the base, the output's name, and any extra arguments.
struct Scenario {
    name: &'static str,
    base: String,
    out: &'static str,
    extra: Vec<String>,
    /// Files written beside the output (bmap, manifest, card) that must also be whole.
    beside: Vec<&'static str>,
}

fn kill_points() -> usize {
    std::env::var("PIBAKE_KILL_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn start(cache: &Path, recipe: &Path, s: &Scenario, dir: &Path) -> Child {
    let mut args: Vec<String> = vec![
        "build".into(),
        recipe.display().to_string(),
        "--base".into(),
        s.base.clone(),
        "-o".into(),
        dir.join(s.out).display().to_string(),
    ];
    args.extend(
        s.extra
            .iter()
            .map(|a| a.replace("{dir}", &dir.display().to_string())),
    );
    pibake_in(cache)
        .args(&args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What the output and the files beside it hold (missing ones as `None`): their SHA-256, and
/// for a manifest, the outputs it records (the rest names this run's cache and directory).
fn outputs(s: &Scenario, dir: &Path) -> Vec<(String, Option<String>)> {
    std::iter::once(s.out)
        .chain(s.beside.iter().copied())
        .map(|f| {
            let p = dir.join(f);
            let held = p.exists().then(|| {
                if f.ends_with(".manifest.json") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    let m: serde_json::Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{f} is not whole JSON ({e}): {text}"));
                    let outs = m["outputs"].as_array().expect("outputs").iter();
                    outs.map(|o| format!("{} {}", o["sha256"], o["bytes"]))
                        .collect::<Vec<_>>()
                        .join(",")
                } else {
                    sha256(&p)
                }
            });
            (f.to_string(), held)
        })
        .collect()
}

fn run_to_end(cache: &Path, recipe: &Path, s: &Scenario, dir: &Path) -> Duration {
    let t = Instant::now();
    let o = start(cache, recipe, s, dir).wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{}: {}",
        s.name,
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed()
}

/// Kill a fresh build of `s` after `after`; returns how long it took if it finished first.
fn kill_after(
    cache: &Path,
    recipe: &Path,
    s: &Scenario,
    dir: &Path,
    after: Duration,
) -> Option<Duration> {
    let mut child = start(cache, recipe, s, dir);
    let t = Instant::now();
    while t.elapsed() < after {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{}: an uninterrupted build failed", s.name);
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    child.wait().unwrap();
    None
}

fn scenarios(server: &Server, local_raw: &Path, local_xz: &Path) -> Vec<Scenario> {
    let url = server.url("/bookworm.img.xz");
    vec![
        // Downloaded, patched block by block into an .img.xz with its bmap.
        Scenario {
            name: "url to img.xz + bmap",
            base: url.clone(),
            out: "out.img.xz",
            extra: vec!["--bmap".into()],
            beside: vec!["out.img.xz.bmap", "out.img.xz.manifest.json"],
        },
        // Downloaded, decoded into the cache once, written raw.
        Scenario {
            name: "url to img",
            base: url,
            out: "out.img",
            extra: vec![],
            beside: vec!["out.img.manifest.json"],
        },
        // A local multi-block .xz to zstd.
        Scenario {
            name: "local xz to img.zst",
            base: local_xz.display().to_string(),
            out: "out.img.zst",
            extra: vec![],
            beside: vec!["out.img.zst.manifest.json"],
        },
        // A local raw image to raw, flashed onto a file standing in for a card.
        Scenario {
            name: "local img to img + flash",
            base: local_raw.display().to_string(),
            out: "out.img",
            extra: vec!["--flash".into(), "{dir}/card".into(), "--yes".into()],
            beside: vec!["out.img.manifest.json"],
        },
    ]
}

#[test]
fn builds_killed_anywhere_leave_only_whole_outputs_and_a_sound_cache() {
    let raw = fixture("bookworm");
    let xz = fixture_xz("bookworm");
    let (raw_sha, xz_sha) = (sha256(&raw), sha256(&xz));
    let server = Server::start();
    let body = std::fs::read(&xz).unwrap();
    server.put(
        "/bookworm.img.xz.sha256",
        format!("{}  bookworm.img.xz\n", sha(&body)).into_bytes(),
    );
    server.put("/bookworm.img.xz", body);
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write_recipe(tmp.path(), &minimal_recipe("killed"));
    let n = kill_points();
    let mut report = Vec::new();
    for s in scenarios(&server, &raw, &xz) {
        // The reference: an uninterrupted build on its own cache.
        let ref_dir = tmp.path().join(format!("ref-{}", report.len()));
        std::fs::create_dir_all(&ref_dir).unwrap();
        if s.extra.iter().any(|a| a == "--flash") {
            std::fs::write(ref_dir.join("card"), b"").unwrap();
        }
        let ref_cache = ref_dir.join("cache");
        let took = run_to_end(&ref_cache, &recipe, &s, &ref_dir);
        let want = outputs(&s, &ref_dir);

        // The kills: one cache and one output directory throughout, as a CI job retried would.
        let dir = tmp.path().join(format!("kill-{}", report.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("cache");
        let mut finished = 0;
        // Kill points spread over the last whole run seen: the cold reference at first, then a
        // warm one once the cache holds the base, so the later kills land inside warm builds.
        let mut span = took;
        for i in 0..n {
            if s.extra.iter().any(|a| a == "--flash") {
                std::fs::write(dir.join("card"), b"").unwrap();
            }
            let at = span.mul_f64((i as f64 + 0.5) / n as f64);
            if let Some(whole) = kill_after(&cache, &recipe, &s, &dir, at) {
                finished += 1;
                span = whole;
            }
            for ((f, got), (_, expected)) in outputs(&s, &dir).iter().zip(&want) {
                if let Some(got) = got {
                    assert_eq!(
                        Some(got),
                        expected.as_ref(),
                        "{}: killed at {at:?}, {f} exists but is not the whole output",
                        s.name
                    );
                }
            }
            // Leave the next kill nothing to hide behind: a stale output would pass the check.
            for f in std::iter::once(s.out).chain(s.beside.iter().copied()) {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        let o = pibake_in(&cache)
            .args(["cache", "verify"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{text}");
        assert!(!text.contains("damaged"), "{}: {text}", s.name);
        if s.extra.iter().any(|a| a == "--flash") {
            std::fs::write(dir.join("card"), b"").unwrap();
        }
        // The partial outputs the kills left are swept by the next build once they are old.
        let left = partials(&dir);
        for p in &left {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
                .unwrap();
        }
        run_to_end(&cache, &recipe, &s, &dir);
        assert_eq!(
            outputs(&s, &dir),
            want,
            "{}: the build after the kills",
            s.name
        );
        assert_eq!(
            partials(&dir),
            Vec::<std::path::PathBuf>::new(),
            "{}",
            s.name
        );
        if s.extra.iter().any(|a| a == "--flash") {
            assert_eq!(
                sha256(&dir.join("card")),
                sha256(&ref_dir.join("card")),
                "the card after the kills"
            );
        }
        report.push(format!(
            "{}: {n} kills over {took:?}, {finished} finished first, {} partial outputs swept",
            s.name,
            left.len()
        ));
    }
    assert_eq!(sha256(&raw), raw_sha, "the raw base changed");
    assert_eq!(sha256(&xz), xz_sha, "the xz base changed");
    eprintln!("kill anywhere:\n  {}", report.join("\n  "));
}

/// Partial outputs (`.pibake-*.partial`) in `dir`.
fn partials(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(".pibake-") && n.ends_with(".partial")
        })
        .collect();
    v.sort();
    v
}
