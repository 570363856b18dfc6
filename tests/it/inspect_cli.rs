//! `pibake inspect`, `ls` and `cat` on Raspberry Pi OS-shaped fixtures, judged against what each
//! fixture was built with and against debugfs and mtools reading the same bytes.

use crate::common;

use common::*;
use serde_json::Value;

fn inspect_json(image: &std::path::Path) -> Value {
    let out = pibake(&["--quiet", "inspect", "--json", image.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints one JSON object")
}

fn check_against_expect(got: &Value, want: &Value, what: &str) {
    for key in ["table", "disk_id", "image_bytes"] {
        assert_eq!(got[key], want[key], "{what}: {key}");
    }
    let (gp, wp) = (
        got["partitions"].as_array().unwrap(),
        want["partitions"].as_array().unwrap(),
    );
    assert_eq!(gp.len(), wp.len(), "{what}: partition count");
    for (g, w) in gp.iter().zip(wp) {
        for key in [
            "index", "type", "start", "sectors", "fs", "label", "partuuid",
        ] {
            assert_eq!(g[key], w[key], "{what}: partition {} {key}", w["index"]);
        }
    }
    for key in ["pretty_name", "codename", "version_id"] {
        assert_eq!(got["os"][key], want["os"][key], "{what}: os.{key}");
    }
    let facts = want["facts"].as_object().unwrap();
    assert!(!facts.is_empty());
    for (key, value) in facts {
        assert_eq!(&got["facts"][key], value, "{what}: facts.{key}");
    }
    let mut gf: Vec<_> = got["ext4_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut wf: Vec<_> = want["ext4_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    gf.sort();
    wf.sort();
    assert_eq!(gf, wf, "{what}: ext4 features");
    assert_eq!(
        got["partuuids_consistent"], true,
        "{what}: cmdline.txt and fstab name this disk"
    );
}

#[test]
fn inspect_reports_what_each_fixture_was_built_with() {
    for release in RELEASES {
        let got = inspect_json(&fixture(release));
        check_against_expect(&got, &expect(release), release);
        assert_eq!(got["compression"], "raw");
    }
}

#[test]
fn inspect_reads_gpt_images() {
    let got = inspect_json(&fixture("gpt"));
    check_against_expect(&got, &expect("gpt"), "gpt");
}

#[test]
fn inspect_reads_compressed_images_the_same_as_raw() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fixture("bookworm");
    let want = expect("bookworm");
    for (ext, cmd) in [
        ("xz", "xz -T0 -1 -c"),
        ("zst", "zstd -T0 -1 -c -q"),
        ("gz", "gzip -1 -c"),
    ] {
        let out = dir.path().join(format!("bookworm.img.{ext}"));
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} {} > {}", raw.display(), out.display()))
            .status()
            .unwrap();
        assert!(status.success(), "{cmd}");
        let got = inspect_json(&out);
        check_against_expect(&got, &want, ext);
        assert_eq!(
            got["compression"],
            match ext {
                "xz" => "xz",
                "zst" => "zstd",
                _ => "gzip",
            }
        );
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn inspect_text_names_the_release_and_stack() {
    let out = pibake(&["inspect", fixture("bullseye").to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Debian GNU/Linux 11 (bullseye)"), "{text}");
    assert!(text.contains("network stack     dhcpcd"), "{text}");
    assert!(text.contains("bootfs") && text.contains("rootfs"), "{text}");
}

/// One `debugfs ls -l` line: (name, mode, uid, gid, size).
fn debugfs_ls(fs: &std::path::Path, dir: &str) -> Vec<(String, u32, u32, u32, u64)> {
    let mut v: Vec<_> = debugfs(fs, &format!("ls -l {dir}"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // ino mode (links) uid gid size date time name
            if f.len() < 9 {
                return None;
            }
            let mode = u32::from_str_radix(f[1], 8).ok()?;
            let name = f[8..].join(" ");
            (name != "." && name != "..").then(|| {
                (
                    name,
                    mode & 0o7777,
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                    f[5].parse().unwrap(),
                )
            })
        })
        .collect();
    v.sort();
    v
}

fn parse_ls(stdout: &[u8]) -> Vec<(String, u32, u32, u32, u64)> {
    let mut v: Vec<_> = String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let perm = &f[0][1..];
            let mut mode = 0u32;
            for (i, c) in perm.chars().enumerate() {
                let bit = 1 << (8 - i);
                match c {
                    'r' | 'w' | 'x' => mode |= bit,
                    's' => mode |= bit | if i == 2 { 0o4000 } else { 0o2000 },
                    'S' => mode |= if i == 2 { 0o4000 } else { 0o2000 },
                    't' => mode |= bit | 0o1000,
                    'T' => mode |= 0o1000,
                    _ => {}
                }
            }
            let name = f[4].to_string();
            (
                name,
                mode,
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn ls_and_cat_agree_with_debugfs_and_mtools() {
    let tmp = tempfile::tempdir().unwrap();
    for release in RELEASES {
        let img = fixture(release);
        let e = expect(release);
        let (boot_off, boot_len) = part(&e, 1);
        let (root_off, root_len) = part(&e, 2);
        let rootfs = tmp.path().join(format!("{release}.ext4"));
        let bootfs = tmp.path().join(format!("{release}.fat"));
        extract(&img, root_off, root_len, &rootfs);
        extract(&img, boot_off, boot_len, &bootfs);
        let i = img.to_str().unwrap();

        for dir in [
            "/etc",
            "/",
            "/usr/bin",
            "/etc/systemd/system/multi-user.target.wants",
        ] {
            let out = pibake(&["ls", i, &format!("root:{dir}")]);
            assert!(
                out.status.success(),
                "{release} ls {dir}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let ours = parse_ls(&out.stdout);
            let theirs = debugfs_ls(&rootfs, dir);
            assert!(ours.len() > 3, "{release} {dir}: too few entries");
            assert_eq!(
                ours, theirs,
                "{release}: ls root:{dir} differs from debugfs"
            );
        }
        for file in [
            "/etc/fstab",
            "/usr/lib/os-release",
            "/etc/hostname",
            "/var/lib/dpkg/status",
        ] {
            let out = pibake(&["cat", i, &format!("root:{file}")]);
            assert!(out.status.success(), "{release} cat {file}");
            assert_eq!(
                out.stdout,
                debugfs_cat(&rootfs, file),
                "{release}: cat root:{file}"
            );
            assert!(!out.stdout.is_empty());
        }
        // /etc/os-release is a symlink into /usr/lib, resolved inside the image.
        let out = pibake(&["cat", i, "root:/etc/os-release"]);
        assert_eq!(out.stdout, debugfs_cat(&rootfs, "/usr/lib/os-release"));

        for file in ["/cmdline.txt", "/config.txt"] {
            let out = pibake(&["cat", i, &format!("boot:{file}")]);
            assert!(out.status.success(), "{release} cat boot:{file}");
            assert_eq!(
                out.stdout,
                mtype(&bootfs, file),
                "{release}: cat boot:{file}"
            );
        }
        let out = pibake(&["ls", i, "boot:/"]);
        let ours: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().nth(4).unwrap().to_string())
            .collect();
        let mdir = std::process::Command::new("mdir")
            .args(["-i", bootfs.to_str().unwrap(), "-b", "::/"])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap();
        let theirs: std::collections::BTreeSet<String> = String::from_utf8_lossy(&mdir.stdout)
            .lines()
            .map(|l| {
                l.trim_start_matches("::/")
                    .trim_end_matches('/')
                    .to_string()
            })
            .filter(|l| !l.is_empty())
            .collect();
        assert!(ours.len() > 5);
        assert_eq!(ours, theirs, "{release}: ls boot:/ differs from mdir");
    }
}

#[test]
fn ls_shows_symlink_targets_and_xattr_binaries_stay_readable() {
    let img = fixture("bookworm");
    let out = pibake(&["ls", img.to_str().unwrap(), "root:/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with('l') && l.ends_with("lib -> usr/lib")),
        "{text}"
    );
    let out = pibake(&["cat", img.to_str().unwrap(), "root:/usr/bin/ping"]);
    assert!(out.status.success() && out.stdout.starts_with(b"\x7fELF"));
}
