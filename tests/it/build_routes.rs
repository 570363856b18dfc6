//! The routes that make a build cost what it changes: an `.img.xz` base read at random, patched
//! into an `.img.xz` (untouched blocks copied verbatim), decoded once into a raw output and the
//! cache, and a warm rebuild cloned from that cache. Every route must give exactly the bytes the
//! plain raw route gives, judged by `xz -t`, `xz -dc` and `sha256sum`.

use crate::common;
use crate::common_http;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn recipe(dir: &Path) -> PathBuf {
    write_recipe(dir, &minimal_recipe("routes"))
}

fn command(dir: &Path, base: &Path, out: &Path) -> Command {
    let mut c = pibake_in(&dir.join("cache"));
    c.args(["build", "--quiet"])
        .arg(recipe(dir))
        .arg("--base")
        .arg(base)
        .arg("-o")
        .arg(out);
    c
}

fn build(dir: &Path, base: &Path, out: &Path) -> Output {
    command(dir, base, out).output().unwrap()
}

fn build_ok(dir: &Path, base: &Path, out: &Path) -> serde_json::Value {
    build_checked(command(dir, base, out), base, out)
}

fn build_checked(mut cmd: Command, base: &Path, out: &Path) -> serde_json::Value {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "build from {} to {} failed:\n{}",
        base.display(),
        out.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let m = std::fs::read_to_string(format!("{}.manifest.json", out.display())).unwrap();
    serde_json::from_str(&m).unwrap()
}

fn xz_sha(xz: &Path) -> String {
    let t = Command::new("xz").arg("-t").arg(xz).status().unwrap();
    assert!(t.success(), "xz -t failed on {}", xz.display());
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("xz -dc '{}' | sha256sum", xz.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

/// Block count and uncompressed sizes per block, as xz itself lists them.
fn xz_blocks(xz: &Path) -> Vec<(u64, u64)> {
    common::xz_list(xz)
        .0
        .iter()
        .map(|b| (b.uncompressed_offset, b.uncompressed_size))
        .collect()
}

fn route(m: &serde_json::Value) -> &str {
    m["outputs"][0]["route"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("no route in the manifest: {m:#}"))
}

#[test]
fn every_route_gives_the_raw_route_s_bytes_on_every_fixture() {
    for release in ["bullseye", "bookworm", "trixie", "gpt"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let raw_base = fixture(release);
        let xz_base = fixture_xz(release);

        let reference = d.join("ref.img");
        let m = build_ok(d, &raw_base, &reference);
        assert_eq!(route(&m), "full");
        let want = sha256(&reference);

        // .img.xz -> .img.xz: decodes to the same image, keeps every base block boundary (the
        // touched blocks are cut into smaller ones), and re-encodes only some blocks.
        let patched = d.join("out.img.xz");
        let m = build_ok(d, &xz_base, &patched);
        assert_eq!(route(&m), "xz-patch", "{release}");
        assert_eq!(m["inputs"]["base"]["access"]["kind"], "xz-blocks");
        assert_eq!(xz_sha(&patched), want, "{release}: patched .xz differs");
        let base_blocks = xz_blocks(&xz_base);
        let out_blocks = xz_blocks(&patched);
        for b in &base_blocks {
            assert!(
                out_blocks.iter().any(|o| o.0 == b.0),
                "{release}: no output block starts where base block {b:?} does"
            );
        }
        let r = &m["outputs"][0]["route"];
        let reencoded = r["reencoded"].as_u64().unwrap();
        assert!(
            reencoded > 0 && reencoded < base_blocks.len() as u64 / 2,
            "{r}"
        );
        // Blocks xz wrote keep their chunks before the first change, and only part of each is
        // compressed again.
        assert_eq!(r["whole"], 0, "{r}");
        let block_size = base_blocks[0].1;
        assert!(
            r["compressed_again"].as_u64().unwrap() < reencoded * block_size,
            "{r}"
        );
        assert!(m["outputs"][0]["raw_sha256"].is_null());

        // .img.xz -> .img, cold: one decoding pass, and the decoded base enters the cache.
        let cold = d.join("cold.img");
        let m = build_ok(d, &xz_base, &cold);
        assert_eq!(route(&m), "xz-decode", "{release}");
        assert_eq!(m["outputs"][0]["route"]["cached"], true);
        assert_eq!(sha256(&cold), want, "{release}: cold raw differs");
        assert_eq!(m["outputs"][0]["raw_sha256"], want.as_str());

        // Warm: cloned from the cache, only changed blocks written, the hash remembered.
        let warm = d.join("warm.img");
        let m = build_ok(d, &xz_base, &warm);
        assert_eq!(route(&m), "cached-copy", "{release}");
        assert_eq!(m["outputs"][0]["route"]["hash_reused"], true);
        assert_eq!(sha256(&warm), want, "{release}: warm raw differs");

        // A patched output verifies by rebuilding the same way.
        let v = pibake_in(&d.join("cache"))
            .args(["verify", "--quiet"])
            .arg(format!("{}.manifest.json", patched.display()))
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
}

#[test]
fn a_single_block_base_is_decoded_whole_and_plan_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw_base = fixture("bookworm");
    let xz_base = fixture_xz_single("bookworm");
    assert_eq!(xz_blocks(&xz_base).len(), 1);

    let plan = pibake_in(&d.join("cache"))
        .args(["plan", "--quiet"])
        .arg(recipe(d))
        .arg("--base")
        .arg(&xz_base)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success());
    assert!(text.contains("decoded in full first"), "{text}");

    let reference = d.join("ref.img");
    build_ok(d, &raw_base, &reference);
    let out = d.join("out.img.xz");
    let m = build_ok(d, &xz_base, &out);
    assert_eq!(m["inputs"]["base"]["access"]["kind"], "decoded");
    assert_eq!(route(&m), "full");
    assert_eq!(xz_sha(&out), sha256(&reference));
}

#[test]
fn a_corrupt_block_the_build_reads_is_a_clear_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let xz_base = d.join("base.img.xz");
    std::fs::copy(fixture_xz("bookworm"), &xz_base).unwrap();
    // The block holding the root filesystem's superblock is read by every build.
    let root_start = part(&expect("bookworm"), 2).0;
    let (coff, csize) = common::xz_list(&xz_base)
        .0
        .iter()
        .find(|b| b.holds(root_start + 1024))
        .map(|b| (b.file_offset, b.total_size))
        .unwrap();
    let mut bytes = std::fs::read(&xz_base).unwrap();
    let at = (coff + csize / 2) as usize;
    bytes[at] ^= 0x55;
    std::fs::write(&xz_base, &bytes).unwrap();
    let before = sha256(&xz_base);

    for out in ["out.img.xz", "out.img"] {
        let out = d.join(out);
        let o = build(d, &xz_base, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("block"), "{err}");
        assert!(!out.exists());
        let leftovers: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty());
        assert_eq!(sha256(&xz_base), before, "the base was modified");
    }
}

#[test]
fn a_downloaded_xz_base_is_read_in_place_and_downloaded_once() {
    let server = common_http::Server::start();
    let xz = std::fs::read(fixture_xz("trixie")).unwrap();
    let sha = common_http::sha(&xz);
    server.put("/trixie.img.xz", xz);
    let url = server.url("/trixie.img.xz");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let reference = d.join("ref.img");
    build_ok(d, &fixture("trixie"), &reference);
    let want = sha256(&reference);

    let run = |out: &Path| {
        let o = pibake_in(&d.join("cache"))
            .args(["build", "--quiet"])
            .arg(recipe(d))
            .args(["--base", &url, "--sha256", &sha, "-o"])
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m = std::fs::read_to_string(format!("{}.manifest.json", out.display())).unwrap();
        serde_json::from_str::<serde_json::Value>(&m).unwrap()
    };
    let patched = d.join("out.img.xz");
    let m = run(&patched);
    assert_eq!(m["inputs"]["base"]["access"]["kind"], "xz-blocks");
    assert_eq!(route(&m), "xz-patch");
    assert_eq!(xz_sha(&patched), want);

    let raw = d.join("out.img");
    let m = run(&raw);
    assert_eq!(route(&m), "xz-decode");
    assert_eq!(sha256(&raw), want);
    assert_eq!(
        server.gets("/trixie.img.xz").len(),
        1,
        "the second build must use the cached download"
    );
}

#[test]
fn a_decoded_base_cached_in_an_earlier_boot_and_never_synced_is_decoded_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let xz_base = fixture_xz("bookworm");
    let in_boot = |boot: &str, out: &Path| {
        let mut c = command(d, &xz_base, out);
        c.env("PIBAKE_BOOT_ID", boot);
        build_checked(c, &xz_base, out)
    };
    let image_meta = || -> serde_json::Value {
        let images = d.join("cache/images");
        let json = std::fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .expect("a decoded base in the cache");
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
    };

    // The cold build leaves the decoded copy unsynced, marked with its boot.
    let first = in_boot("boot-a", &d.join("a.img"));
    assert_eq!(route(&first), "xz-decode");
    assert_eq!(image_meta()["unsynced_boot"], "boot-a");

    // After a reboot (a crash, for all pibake knows) it is not trusted: decoded again.
    let second = in_boot("boot-b", &d.join("b.img"));
    assert_eq!(
        route(&second),
        "xz-decode",
        "an unsynced copy from another boot was reused"
    );
    assert_eq!(image_meta()["unsynced_boot"], "boot-b");

    // Within its boot it is reused, synced, and from then on trusted in any boot.
    let third = in_boot("boot-b", &d.join("c.img"));
    assert_eq!(route(&third), "cached-copy");
    assert!(
        image_meta().get("unsynced_boot").is_none(),
        "{}",
        image_meta()
    );
    let fourth = in_boot("boot-c", &d.join("d.img"));
    assert_eq!(route(&fourth), "cached-copy");

    let want = sha256(&d.join("a.img"));
    for out in ["b.img", "c.img", "d.img"] {
        assert_eq!(sha256(&d.join(out)), want, "{out}");
    }
}
