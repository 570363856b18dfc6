//! `pibake build` turns every fixture release into a cluster master: judged by e2fsck/fsck.vfat,
//! by debugfs and mtools reading each expected file, and by the real programs (dnsmasq, nft,
//! iptables-restore, sshd, openssl) checking what was generated.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const PASSWORD: &str = "raspberry-demo-pw";
const PSK: &str = "correct horse battery";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOq0Xy2m3sZ3uWcJ1TestKeyOnlyForPibakeTests000 test@pibake";

fn recipe(dir: &Path, extra: &str) -> PathBuf {
    write_recipe(
        dir,
        &format!(
            r#"[node]
hostname = "master"
[user]
name = "pi"
password = "{PASSWORD}"
ssh_authorized_keys = ["{KEY}"]
[wifi]
ssid = "uplink-net"
psk = "{PSK}"
country = "GB"
[locale]
timezone = "Europe/London"
keymap = "gb"
{extra}"#
        ),
    )
}

fn build(recipe: &Path, base: &Path, out: &Path, stack: &str) -> Output {
    pibake_in(&test_cache())
        .args([
            "build",
            recipe.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--stack",
            stack,
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The built image's root and boot filesystems, extracted for the external tools.
struct Built {
    root: PathBuf,
    boot: PathBuf,
}

fn extract_parts(img: &Path, release: &str, dir: &Path) -> Built {
    let e = expect(release);
    let (ro, rl) = part(&e, 2);
    let (bo, bl) = part(&e, 1);
    let b = Built {
        root: dir.join(format!("{release}.root.ext4")),
        boot: dir.join(format!("{release}.boot.fat")),
    };
    extract(img, ro, rl, &b.root);
    extract(img, bo, bl, &b.boot);
    assert_e2fsck_clean(&b.root);
    assert_fsck_vfat_clean(&b.boot);
    b
}

/// (type, mode, uid, gid) from debugfs.
fn stat(fs: &Path, p: &str) -> (String, u32, u32, u32) {
    let out = debugfs(fs, &format!("stat \"{p}\""));
    let first = out
        .lines()
        .next()
        .unwrap_or_else(|| panic!("debugfs: no {p}"));
    assert!(first.contains("Type:"), "debugfs stat {p}: {out}");
    let kind = first
        .split("Type:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let mode = u32::from_str_radix(
        first
            .split("Mode:")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap(),
        8,
    )
    .unwrap();
    let user = out.lines().find(|l| l.starts_with("User:")).unwrap();
    let uid = user.split_whitespace().nth(1).unwrap().parse().unwrap();
    let gid = user
        .split("Group:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (kind, mode, uid, gid)
}

fn cat(fs: &Path, p: &str) -> String {
    String::from_utf8(debugfs_cat(fs, p)).unwrap()
}

fn file_is(fs: &Path, p: &str, mode: u32, uid: u32, gid: u32) {
    assert_eq!(stat(fs, p), ("regular".to_string(), mode, uid, gid), "{p}");
}

fn link_target(fs: &Path, p: &str) -> String {
    let out = debugfs(fs, &format!("stat \"{p}\""));
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Fast link dest: ")
                .map(|t| t.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("{p} is not a fast symlink: {out}"))
}

fn run_ok(cmd: &mut Command, what: &str) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what} rejected it:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Checks shared by both stacks: identity, user, SSH, Wi-Fi, locale.
fn check_base(b: &Built, release: &str, dir: &Path) {
    assert_eq!(cat(&b.root, "/etc/hostname"), "master\n");
    assert!(
        cat(&b.root, "/etc/hosts")
            .lines()
            .any(|l| l == "127.0.1.1\tmaster")
    );
    assert!(!cat(&b.root, "/etc/hosts").contains("raspberrypi"));
    let passwd = cat(&b.root, "/etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("pi:"))
        .expect("pi in /etc/passwd");
    let f: Vec<&str> = line.split(':').collect();
    let (uid, gid): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    assert_eq!(f[5], "/home/pi");
    let shadow = cat(&b.root, "/etc/shadow");
    file_is(&b.root, "/etc/shadow", 0o640, 0, 42);
    let hash = shadow
        .lines()
        .find(|l| l.starts_with("pi:"))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .to_string();
    // openssl computes the same sha512-crypt from the password and the hash's own salt.
    let salt = hash
        .split('$')
        .filter(|s| !s.is_empty() && !s.starts_with("rounds="))
        .nth(1)
        .unwrap();
    let o = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, PASSWORD])
        .output()
        .unwrap();
    let theirs = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(
        hash.replace("rounds=5000$", ""),
        theirs,
        "{release}: password hash does not verify"
    );
    assert!(
        cat(&b.root, "/etc/group")
            .lines()
            .any(|l| l.starts_with("sudo:")
                && l.split(':').nth(3).unwrap().split(',').any(|m| m == "pi"))
    );
    assert_eq!(
        stat(&b.root, "/home/pi"),
        ("directory".into(), 0o755, uid, gid)
    );
    assert_eq!(
        stat(&b.root, "/home/pi/.ssh"),
        ("directory".into(), 0o700, uid, gid)
    );
    file_is(&b.root, "/home/pi/.ssh/authorized_keys", 0o600, uid, gid);
    assert_eq!(
        cat(&b.root, "/home/pi/.ssh/authorized_keys"),
        format!("{KEY}\n")
    );
    assert_eq!(
        String::from_utf8(mtype(&b.boot, "/userconf.txt")).unwrap(),
        format!("pi:{hash}\n")
    );
    assert_eq!(mtype(&b.boot, "/ssh"), b"");
    // sshd enabled offline, its drop-in accepted by sshd itself.
    let wants = link_target(
        &b.root,
        "/etc/systemd/system/multi-user.target.wants/ssh.service",
    );
    assert!(wants.ends_with("/systemd/system/ssh.service"), "{wants}");
    let sshd_conf = dir.join(format!("{release}-sshd.conf"));
    std::fs::write(
        &sshd_conf,
        cat(&b.root, "/etc/ssh/sshd_config.d/50-pibake.conf"),
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(&sshd_conf)
            .unwrap()
            .contains("PasswordAuthentication no")
    );
    let key = dir.join(format!("{release}-hostkey"));
    if !key.exists() {
        run_ok(
            Command::new("ssh-keygen").args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                key.to_str().unwrap(),
            ]),
            "ssh-keygen",
        );
    }
    let main = dir.join(format!("{release}-sshd_config"));
    std::fs::write(
        &main,
        format!(
            "HostKey {}\nInclude {}\n",
            key.display(),
            sshd_conf.display()
        ),
    )
    .unwrap();
    // sshd refuses to run at all without its privilege-separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    run_ok(
        Command::new("/usr/sbin/sshd").args(["-t", "-f", main.to_str().unwrap()]),
        "sshd -t",
    );
    // Wi-Fi country on the kernel command line, root= untouched.
    let cmdline = String::from_utf8(mtype(&b.boot, "/cmdline.txt")).unwrap();
    assert!(
        cmdline.contains(" cfg80211.ieee80211_regdom=GB"),
        "{cmdline}"
    );
    assert!(cmdline.contains(&format!(
        "root=PARTUUID={}-02",
        expect(release)["disk_id"].as_str().unwrap()
    )));
    assert_eq!(cmdline.lines().count(), 1);
    assert_eq!(
        cat(
            &b.root,
            "/var/lib/systemd/rfkill/platform-fe300000.mmcnr:wlan"
        ),
        "0\n"
    );
    // Locale.
    assert_eq!(cat(&b.root, "/etc/timezone"), "Europe/London\n");
    assert_eq!(
        link_target(&b.root, "/etc/localtime"),
        "/usr/share/zoneinfo/Europe/London"
    );
    assert!(
        cat(&b.root, "/etc/default/keyboard")
            .lines()
            .any(|l| l == "XKBLAYOUT=\"gb\"")
    );
}

fn check_nm(b: &Built) {
    let lan = "/etc/NetworkManager/system-connections/pibake-lan.nmconnection";
    file_is(&b.root, lan, 0o600, 0, 0);
    let text = cat(&b.root, lan);
    for line in [
        "type=ethernet",
        "interface-name=eth0",
        "method=manual",
        "address1=192.168.5.1/24",
    ] {
        assert!(text.lines().any(|l| l == line), "{lan}: no {line}\n{text}");
    }
    let wifi = "/etc/NetworkManager/system-connections/pibake-uplink.nmconnection";
    file_is(&b.root, wifi, 0o600, 0, 0);
    let text = cat(&b.root, wifi);
    assert!(
        text.contains("ssid=uplink-net")
            && text.contains(&format!("psk={PSK}"))
            && text.contains("interface-name=wlan0")
    );
    assert!(
        cat(&b.root, "/var/lib/NetworkManager/NetworkManager.state")
            .lines()
            .any(|l| l == "WirelessEnabled=true")
    );
}

fn check_modern(b: &Built, release: &str, dir: &Path) {
    let conf = cat(&b.root, "/etc/pibake/dnsmasq.conf");
    assert!(
        conf.contains("interface=eth0")
            && conf.contains("dhcp-range=192.168.5.2,192.168.5.64,255.255.255.0,24h"),
        "{conf}"
    );
    let f = dir.join(format!("{release}-dnsmasq.conf"));
    std::fs::write(&f, &conf).unwrap();
    run_ok(
        Command::new("dnsmasq").args(["--test", "-C", f.to_str().unwrap()]),
        "dnsmasq --test",
    );
    let unit = cat(&b.root, "/etc/systemd/system/pibake-dnsmasq.service");
    assert!(unit.contains(
        "ExecStart=/usr/sbin/dnsmasq --keep-in-foreground --conf-file=/etc/pibake/dnsmasq.conf"
    ));
    assert_eq!(
        link_target(
            &b.root,
            "/etc/systemd/system/multi-user.target.wants/pibake-dnsmasq.service"
        ),
        "/etc/systemd/system/pibake-dnsmasq.service"
    );
    assert_eq!(
        cat(&b.root, "/etc/sysctl.d/90-pibake-forward.conf")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["net.ipv4.ip_forward=1"]
    );
    let nft = cat(&b.root, "/etc/nftables.conf");
    assert!(
        nft.contains("oifname \"wlan0\" masquerade") && nft.contains("policy drop"),
        "{nft}"
    );
    let f = dir.join(format!("{release}-nftables.conf"));
    std::fs::write(&f, &nft).unwrap();
    // unshare -n: checked against a fresh network namespace, never the host's rules.
    run_ok(
        Command::new("unshare").args(["-n", "nft", "-c", "-f", f.to_str().unwrap()]),
        "nft -c",
    );
    let nft_unit = link_target(
        &b.root,
        "/etc/systemd/system/sysinit.target.wants/nftables.service",
    );
    assert!(
        nft_unit.ends_with("/systemd/system/nftables.service"),
        "{nft_unit}"
    );
}

fn check_release_specific(b: &Built, release: &str) {
    match release {
        "bullseye" => {
            let dhcpcd = cat(&b.root, "/etc/dhcpcd.conf");
            assert!(
                dhcpcd.contains(
                    "# BEGIN pibake master-lan\ninterface eth0\nstatic ip_address=192.168.5.1/24\n"
                ),
                "{dhcpcd}"
            );
            let wpa = "/etc/wpa_supplicant/wpa_supplicant.conf";
            file_is(&b.root, wpa, 0o600, 0, 0);
            let text = cat(&b.root, wpa);
            assert!(
                text.contains("country=GB")
                    && text.contains("ssid=\"uplink-net\"")
                    && text.contains(&format!("psk=\"{PSK}\""))
            );
        }
        "trixie" => {
            check_nm(b);
            let cfg = cat(&b.root, "/etc/cloud/cloud.cfg.d/99-pibake.cfg");
            assert!(
                cfg.contains("network: {config: disabled}")
                    && cfg.contains("preserve_hostname: true"),
                "{cfg}"
            );
        }
        _ => check_nm(b),
    }
}

#[test]
fn modern_master_on_every_release() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "");
    for release in RELEASES {
        let base = fixture(release);
        let base_sha = sha256(&base);
        let out = tmp.path().join(format!("{release}-master.img"));
        let o = build(&r, &base, &out, "auto");
        ok(&o, release);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("modern stack"),
            "{release}: auto picks modern on a stock image: {err}"
        );
        assert_eq!(sha256(&base), base_sha, "{release}: base modified");
        let b = extract_parts(&out, release, tmp.path());
        check_base(&b, release, tmp.path());
        check_modern(&b, release, tmp.path());
        check_release_specific(&b, release);
        // The manifest records inputs and outputs and no secret.
        let manifest = std::fs::read_to_string(format!("{}.manifest.json", out.display())).unwrap();
        let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(m["inputs"]["base"]["sha256"], base_sha);
        assert_eq!(m["outputs"][0]["sha256"], sha256(&out));
        assert_eq!(m["inputs"]["stack"], "modern");
        for secret in [PASSWORD, PSK] {
            assert!(
                !manifest.contains(secret),
                "{release}: secret in the manifest"
            );
            assert!(!err.contains(secret), "{release}: secret on stderr");
        }
        assert!(
            !manifest.contains("$6$"),
            "{release}: password hash in the manifest"
        );
        std::fs::remove_file(&out).unwrap();
    }
}

/// A bullseye image with what the classic recipe needs installed (as a user who ran
/// `apt install dnsmasq iptables` would have it).
fn bullseye_with_classic_packages(dir: &Path) -> PathBuf {
    let img = dir.join("bullseye-classic.img");
    let sh = |c: &str| {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(c)
                .status()
                .unwrap()
                .success(),
            "{c}"
        )
    };
    sh(&format!(
        "cp --sparse=always {} {}",
        fixture("bullseye").display(),
        img.display()
    ));
    let (off, len) = part(&expect("bullseye"), 2);
    let fs = dir.join("bc-root.ext4");
    extract(&img, off, len, &fs);
    let status = String::from_utf8(debugfs_cat(&fs, "/var/lib/dpkg/status")).unwrap();
    let extra = "Package: dnsmasq\nStatus: install ok installed\nVersion: 2.85-1\n\nPackage: iptables\nStatus: install ok installed\nVersion: 1.8.7-1\n\n";
    std::fs::write(dir.join("status"), format!("{status}\n{extra}")).unwrap();
    std::fs::write(
        dir.join("dnsmasq.conf"),
        "# Configuration file for dnsmasq.\n#interface=\n",
    )
    .unwrap();
    std::fs::write(dir.join("iptables"), b"\x7fELF iptables stand-in").unwrap();
    let cmds = dir.join("cmds");
    std::fs::write(
        &cmds,
        format!(
            "rm /var/lib/dpkg/status\nwrite {0}/status /var/lib/dpkg/status\nwrite {0}/dnsmasq.conf /etc/dnsmasq.conf\nwrite {0}/iptables /usr/sbin/iptables\n",
            dir.display()
        ),
    )
    .unwrap();
    sh(&format!(
        "debugfs -w -f {} {} >/dev/null 2>&1",
        cmds.display(),
        fs.display()
    ));
    sh(&format!(
        "dd if={} of={} bs=1M seek={off} oflag=seek_bytes conv=notrunc,sparse status=none",
        fs.display(),
        img.display()
    ));
    img
}

#[test]
fn classic_master_where_the_image_has_its_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let base = bullseye_with_classic_packages(tmp.path());
    let r = recipe(tmp.path(), "");
    let out = tmp.path().join("classic.img");
    let o = build(&r, &base, &out, "auto");
    ok(&o, "classic build");
    assert!(String::from_utf8_lossy(&o.stderr).contains("classic stack"));
    let b = extract_parts(&out, "bullseye", tmp.path());
    check_base(&b, "bullseye", tmp.path());
    check_release_specific(&b, "bullseye");
    let dnsmasq = cat(&b.root, "/etc/dnsmasq.conf");
    assert!(
        dnsmasq.contains("interface=eth0\ndhcp-range=192.168.5.2,192.168.5.64,255.255.255.0,24h\n"),
        "{dnsmasq}"
    );
    let f = tmp.path().join("classic-dnsmasq.conf");
    std::fs::write(&f, &dnsmasq).unwrap();
    run_ok(
        Command::new("dnsmasq").args(["--test", "-C", f.to_str().unwrap()]),
        "dnsmasq --test",
    );
    let sysctl = cat(&b.root, "/etc/sysctl.conf");
    assert!(
        sysctl.lines().any(|l| l == "net.ipv4.ip_forward=1")
            && !sysctl.contains("#net.ipv4.ip_forward=1"),
        "{sysctl}"
    );
    let nat = cat(&b.root, "/etc/iptables.ipv4.nat");
    assert!(nat.contains("-A POSTROUTING -o wlan0 -j MASQUERADE"));
    let f = tmp.path().join("iptables.ipv4.nat");
    std::fs::write(&f, &nat).unwrap();
    run_ok(
        Command::new("unshare").args(["-n", "iptables-restore", "--test", f.to_str().unwrap()]),
        "iptables-restore --test",
    );
    let rc = cat(&b.root, "/etc/rc.local");
    assert!(
        rc.contains("iptables-restore < /etc/iptables.ipv4.nat\n# END pibake master-nat\nexit 0"),
        "{rc}"
    );
    assert_eq!(stat(&b.root, "/etc/rc.local").1, 0o755);
}

#[test]
fn classic_is_refused_where_the_image_lacks_it() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "");
    let out = tmp.path().join("x.img");
    let o = build(&r, &fixture("bookworm"), &out, "classic");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dnsmasq") && err.contains("iptables") && err.contains("--stack modern"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn rebuilding_a_built_image_changes_nothing_and_builds_are_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "");
    let base = fixture("trixie");
    let a = tmp.path().join("a.img");
    let b = tmp.path().join("b.img");
    ok(&build(&r, &base, &a, "modern"), "first build");
    ok(&build(&r, &base, &b, "modern"), "second build");
    assert_eq!(
        sha256(&a),
        sha256(&b),
        "two builds with the same inputs differ"
    );
    let c = tmp.path().join("c.img");
    let o = build(&r, &a, &c, "modern");
    ok(&o, "rebuild");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(" 0 of "),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256(&c),
        sha256(&a),
        "building on a built image changed it"
    );
}

#[test]
fn plan_shows_every_operation_without_secrets_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "");
    let base = fixture("bookworm");
    let before = sha256(&base);
    let o = pibake_in(&test_cache())
        .args([
            "plan",
            r.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    ok(&o, "plan");
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "stack      modern",
        "root:/etc/nftables.conf",
        "enable nftables.service",
        "boot:/cmdline.txt",
        "NetworkManager.service is enabled",
        "[secret]",
    ] {
        assert!(text.contains(want), "plan lacks {want:?}:\n{text}");
    }
    let o = pibake_in(&test_cache())
        .args([
            "plan",
            r.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    ok(&o, "plan --json");
    let json = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["ops"].as_array().unwrap().len() > 20);
    for secret in [PASSWORD, PSK, "$6$"] {
        assert!(
            !json.contains(secret) && !text.contains(secret),
            "secret {secret:?} in the plan"
        );
    }
    assert_eq!(sha256(&base), before);
}

#[test]
fn invalid_recipes_point_at_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[network]\naddress = \"192.168.5.1/24\"\ndhcp_range = [\"10.0.0.2\", \"10.0.0.9\"]\n",
            ":3:14:",
            "outside the LAN",
        ),
        (
            "[node]\nhostname = \"bad_host!\"\n",
            ":2:12:",
            "not a valid host name",
        ),
        (
            "[wifi]\nssid = \"x\"\npsk = \"short\"\ncountry = \"GB\"\n",
            ":3:7:",
            "8 to 63",
        ),
        (
            "[wifi]\nssid = \"x\"\npsk = \"long enough\"\ncountry = \"Britain\"\n",
            ":4:11:",
            "two-letter",
        ),
        (
            "[network]\nlan_interface = \"wlan0\"\n",
            ":2:17:",
            "different interfaces",
        ),
        (
            "[network]\naddress = \"192.168.5.1\"\n",
            ":2:11:",
            "prefix length",
        ),
        (
            "[network]\ndhcp_range = [\"192.168.5.1\", \"192.168.5.9\"]\n",
            ":2:14:",
            "master's own address",
        ),
        ("[network\n", ":1:", "invalid"),
    ];
    for (text, at, msg) in cases {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let o = pibake_in(&test_cache())
            .args([
                "plan",
                p.to_str().unwrap(),
                "--base",
                fixture("bookworm").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains(&format!("bad.toml{at}")),
            "{text}: expected position {at} in {err}"
        );
        assert!(err.contains(msg), "{text}: expected {msg:?} in {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// A role that exists only as data (tests/roles/sensor): found with --roles, extending the
/// built-in base, its own input, rule, stacks, lets and files honoured; nothing of the master.
#[test]
fn a_role_that_is_only_data_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let roles = root_dir().join("tests/roles");
    let run = |recipe: &str, stack: &str, out: &Path| {
        let r = tmp.path().join("sensor.toml");
        std::fs::write(&r, recipe).unwrap();
        pibake_in(&test_cache())
            .args(["build", r.to_str().unwrap(), "--base"])
            .arg(fixture("bookworm"))
            .args(["--roles", roles.to_str().unwrap(), "--stack", stack, "-o"])
            .arg(out)
            .output()
            .unwrap()
    };
    // A refusal: exit 2, the message and no output (the base is checked once, at the end).
    let base_sha = sha256(&fixture("bookworm"));
    let refused = |recipe: &str, stack: &str| -> String {
        let out = tmp.path().join("refused.img");
        let o = run(recipe, stack, &out);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(!out.exists(), "a refused build wrote {}", out.display());
        err
    };
    let out = tmp.path().join("sensor.img");
    let recipe = "[node]\nrole = \"sensor\"\nhostname = \"probe1\"\n[user]\nname = \"ada\"\n[sensor]\ninterval = 30\n";
    let o = run(recipe, "auto", &out);
    ok(&o, "sensor build");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("timer stack"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let b = extract_parts(&out, "bookworm", tmp.path());
    assert_eq!(cat(&b.root, "/etc/hostname"), "probe1\n");
    let conf = cat(&b.root, "/etc/pibake-sensor.conf");
    assert!(
        conf.starts_with("# probe1 (bookworm, timer stack)\n"),
        "{conf}"
    );
    assert!(
        conf.contains("collector=192.168.5.1\nevery=30s\n"),
        "{conf}"
    );
    assert!(
        conf.contains("user=ada:1001") || conf.contains("user=ada:1000"),
        "{conf}"
    );
    assert!(cat(&b.root, "/etc/passwd").contains("\nada:x:"));
    assert_eq!(
        cat(&b.root, "/etc/systemd/system/pibake-sensor.timer"),
        "[Timer]\nOnUnitActiveSec=30s\n"
    );
    // Nothing of the master role: no DHCP server, no forwarding.
    for p in [
        "/etc/pibake/dnsmasq.conf",
        "/etc/sysctl.d/90-pibake-forward.conf",
    ] {
        assert!(
            !debugfs(&b.root, &format!("stat \"{p}\"")).contains("Type:"),
            "{p}"
        );
    }
    // The role's own stack names are the ones --stack takes.
    let o = run(recipe, "plain", &tmp.path().join("plain.img"));
    ok(&o, "sensor build, plain stack");
    let err = refused(recipe, "modern");
    assert!(
        err.contains("unknown stack \"modern\"") && err.contains("timer, plain"),
        "{err}"
    );
    // Its rule, and its schema: the master's [network] is not part of this role.
    let err = refused(
        "[node]\nrole = \"sensor\"\n[sensor]\ninterval = 1\n",
        "auto",
    );
    assert!(
        err.contains("sensor.toml:4:12: interval 1 is too short"),
        "{err}"
    );
    let err = refused(
        "[node]\nrole = \"sensor\"\n[network]\nlease = \"1h\"\n",
        "auto",
    );
    assert!(err.contains("unknown section [network]"), "{err}");
    assert_eq!(sha256(&fixture("bookworm")), base_sha, "base modified");
}
