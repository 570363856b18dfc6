//! `pibake build` with every output at once: `.img.xz` + `--bmap` + `--imager-json` + `--flash`
//! to a regular file standing in for a card. Judged by bmaptool, xz, sha256sum and a byte
//! comparison against a separate raw build, never by pibake reading its own output back.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn recipe(dir: &Path) -> PathBuf {
    write_recipe(dir, &minimal_recipe("golden"))
}

fn pibake_ok(args: &[&str]) -> String {
    let o = pibake_in(&test_cache()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "pibake {args:?} failed:\n{err}");
    err
}

fn sha256sum(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

fn xz_decoded_sha(path: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("xz -dc '{}' | sha256sum", path.display()))
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

#[test]
fn one_build_writes_xz_bmap_imager_entry_and_flashes() {
    let base = fixture("bookworm");
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path());
    let (r, b) = (r.to_str().unwrap(), base.to_str().unwrap());

    // The reference: the same build written as a plain raw image.
    let raw = dir.path().join("ref.img");
    pibake_ok(&["build", r, "--base", b, "-o", raw.to_str().unwrap()]);

    let out = dir.path().join("golden.img.xz");
    let json = dir.path().join("repo.json");
    let card = dir.path().join("card.bin");
    std::fs::write(&card, b"").unwrap();
    let log = pibake_ok(&[
        "build",
        r,
        "--base",
        b,
        "-o",
        out.to_str().unwrap(),
        "--bmap",
        "--imager-json",
        json.to_str().unwrap(),
        "--imager-name",
        "Cluster master",
        "--flash",
        card.to_str().unwrap(),
        "--yes",
    ]);
    assert!(log.contains("flashed"), "{log}");
    // Outputs are ordinary files (0666 less the test runner's umask), not 0600 temporaries.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let umask = Command::new("sh").arg("-c").arg("umask").output().unwrap();
        let umask = u32::from_str_radix(String::from_utf8_lossy(&umask.stdout).trim(), 8).unwrap();
        for f in [&out, &json] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o666 & !umask, "{}", f.display());
        }
    }

    // The .xz is sound and holds exactly the raw build.
    let t = Command::new("xz").arg("-t").arg(&out).status().unwrap();
    assert!(t.success());
    let raw_sha = sha256sum(&raw);
    assert_eq!(xz_decoded_sha(&out), raw_sha);

    // bmaptool finds OUT.bmap, checks every range and reproduces the raw image.
    let bmap = PathBuf::from(format!("{}.bmap", out.display()));
    assert!(bmap.is_file());
    let copy = dir.path().join("copy.img");
    let o = Command::new("bmaptool")
        .arg("copy")
        .arg(&out)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bmaptool copy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(sha256sum(&copy), raw_sha);

    // The Imager entry describes both files as the tools see them.
    let repo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let e = &repo["os_list"][0];
    assert_eq!(e["name"], "Cluster master");
    assert_eq!(e["url"], "golden.img.xz");
    assert_eq!(e["extract_sha256"], raw_sha.as_str());
    assert_eq!(e["extract_size"], std::fs::metadata(&raw).unwrap().len());
    assert_eq!(e["image_download_sha256"], sha256sum(&out).as_str());
    assert_eq!(
        e["image_download_size"],
        std::fs::metadata(&out).unwrap().len()
    );
    assert_eq!(e["release_date"], "2025-01-01");
    assert_eq!(e["init_format"], "none");

    // The card holds the image in every range the bmap maps (unmapped blocks are free space
    // and were never written).
    let card_bytes = std::fs::read(&card).unwrap();
    let raw_bytes = std::fs::read(&raw).unwrap();
    assert_eq!(card_bytes.len(), raw_bytes.len());
    let text = std::fs::read_to_string(&bmap).unwrap();
    let mut ranges = 0;
    for line in text.lines().filter(|l| l.contains("<Range")) {
        let span = line.split('>').nth(1).unwrap().split('<').next().unwrap();
        let (a, z) = span.split_once('-').unwrap_or((span, span));
        let (a, z): (usize, usize) = (a.trim().parse().unwrap(), z.trim().parse().unwrap());
        let (s, e) = (a * 4096, ((z + 1) * 4096).min(raw_bytes.len()));
        assert!(card_bytes[s..e] == raw_bytes[s..e], "range {a}-{z} differs");
        ranges += 1;
    }
    assert!(ranges > 0);

    // The manifest lists every output.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.manifest.json", out.display())).unwrap(),
    )
    .unwrap();
    let formats: Vec<&str> = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["xz", "bmap", "imager-json"]);
    assert_eq!(m["outputs"][0]["raw_sha256"], raw_sha.as_str());
}

#[test]
fn a_refused_card_costs_no_build() {
    let base = fixture("bookworm");
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path());
    let out = dir.path().join("never.img");
    // A directory is not something pibake will flash; it must say so before writing anything.
    let o = pibake_in(&test_cache())
        .args([
            "build",
            r.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--flash",
            dir.path().to_str().unwrap(),
            "--yes",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists());
    assert!(!PathBuf::from(format!("{}.manifest.json", out.display())).exists());
}

#[test]
fn sha256_checks_a_local_base_too() {
    let base = fixture("gpt");
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path());
    let plan = |sha256: &str| {
        pibake_in(&dir.path().join("cache"))
            .args(["plan", "--quiet"])
            .arg(&r)
            .arg("--base")
            .arg(&base)
            .args(["--sha256", sha256])
            .output()
            .unwrap()
    };
    let wrong = "0".repeat(64);
    let before = sha256sum(&base);
    let o = plan(&wrong);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&wrong), "{err}");
    assert_eq!(sha256sum(&base), before, "the base was modified");
    let o = plan(&before);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
