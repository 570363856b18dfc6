//! `pibake cluster build`: a master and its workers from one inventory and one base, each
//! image judged by e2fsck and fsck.vfat, every key by ssh-keygen, the SSH configuration by
//! sshd, the reservations by dnsmasq, the fabfile by Python; two builds byte-identical, a
//! fourth worker leaving the first three untouched, and no secret in anything printed or
//! recorded.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{
    assert_e2fsck_clean, assert_fsck_vfat_clean, debugfs, debugfs_cat, expect, extract, fixture_xz,
    mtype, part, pibake_in, sha256, test_cache,
};

const PASSWORD: &str = "pw-cluster-only-in-the-inventory";
const PSK: &str = "uplink-psk-never-printed";

fn inventory(base: &Path, workers: &[&str]) -> String {
    let mut s = format!(
        "[cluster]\nname = \"t\"\ndomain = \"t.lan\"\nbase = \"{}\"\n\n\
         [defaults.user]\nname = \"pi\"\npassword = \"{PASSWORD}\"\n\n\
         [master]\nhostname = \"boss\"\n[master.wifi]\nssid = \"up\"\npsk = \"{PSK}\"\ncountry = \"GB\"\n",
        base.display()
    );
    for (i, w) in workers.iter().enumerate() {
        s.push_str(&format!("\n[[worker]]\nhostname = \"{w}\"\n"));
        if i == 0 {
            s.push_str("mac = \"dc:a6:32:01:36:c2\"\n");
        }
    }
    s
}

/// Run `pibake args` and return (exit code, stdout + stderr).
fn run(args: &[&str]) -> (i32, String) {
    let o = pibake_in(&test_cache()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

fn build(inv: &Path, out: &Path) -> String {
    let (code, text) = run(&[
        "cluster",
        "build",
        inv.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    text
}

fn ok(cmd: &mut Command, what: &str) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} (make deps installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{what} rejected it:\n{text}");
    text
}

/// The root and boot filesystems of a built `.img.xz`, decoded by the real `xz`.
struct Node {
    root: PathBuf,
    boot: PathBuf,
    /// The MBR disk identifier, as sfdisk reads it (8 hex digits).
    disk_id: String,
}

fn open_node(img_xz: &Path, dir: &Path) -> Node {
    let raw = dir.join("raw.img");
    ok(
        Command::new("sh").arg("-c").arg(format!(
            "xz -dc '{}' | dd of='{}' bs=1M conv=sparse status=none",
            img_xz.display(),
            raw.display()
        )),
        "xz -dc",
    );
    let e = expect("bookworm");
    let (ro, rl) = part(&e, 2);
    let (bo, bl) = part(&e, 1);
    let label = ok(
        Command::new("sfdisk").args(["--dump", raw.to_str().unwrap()]),
        "sfdisk --dump",
    );
    let disk_id = label
        .lines()
        .find_map(|l| l.strip_prefix("label-id: 0x"))
        .unwrap_or_else(|| panic!("no label-id in {label}"))
        .to_string();
    let node = Node {
        root: dir.join("root"),
        boot: dir.join("boot"),
        disk_id,
    };
    extract(&raw, ro, rl, &node.root);
    extract(&raw, bo, bl, &node.boot);
    std::fs::remove_file(&raw).unwrap();
    assert_e2fsck_clean(&node.root);
    assert_fsck_vfat_clean(&node.boot);
    node
}

fn cat(fs: &Path, p: &str) -> String {
    String::from_utf8(debugfs_cat(fs, p)).unwrap()
}

/// Copy a key out of an image into `dir`, 0600 as ssh-keygen insists.
fn key_out(fs: &Path, p: &str, dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join(name);
    std::fs::write(&f, debugfs_cat(fs, p)).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

/// The `type base64` part of `ssh-keygen -y`'s answer for a private key.
fn public_of(private: &Path) -> String {
    let line = ok(
        Command::new("ssh-keygen").arg("-y").arg("-f").arg(private),
        "ssh-keygen -y",
    );
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn fingerprint(file: &Path) -> String {
    let out = ok(
        Command::new("ssh-keygen").arg("-l").arg("-f").arg(file),
        "ssh-keygen -l",
    );
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn images(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".img.xz"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha256(&p),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_master_and_three_workers_are_baked_judged_by_real_tools_and_rebuilt_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let base = fixture_xz("bookworm");
    let before = sha256(&base);
    let inv = t.join("cluster.toml");
    std::fs::write(&inv, inventory(&base, &["node01", "node02", "node03"])).unwrap();
    let out = t.join("out");
    let mut said = build(&inv, &out);
    assert_eq!(sha256(&base), before, "the base was modified");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cluster.manifest.json")).unwrap()).unwrap();
    let nodes = manifest["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes
        .iter()
        .map(|n| n["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["boss", "node01", "node02", "node03"]);

    // The secrets directory: private, keys 0600, made by this build.
    use std::os::unix::fs::PermissionsExt;
    let secrets = t.join("cluster.secrets");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&secrets), 0o700);
    for k in ["cluster-client", "host-boss", "host-node01", "host-node03"] {
        assert_eq!(mode(&secrets.join(k)), 0o600, "{k}");
    }

    // Every image clean to e2fsck and fsck.vfat; every host key read by ssh-keygen, its
    // fingerprint the one the manifest records, its public half what the image carries.
    let keys = t.join("keys");
    std::fs::create_dir(&keys).unwrap();
    let mut opened = Vec::new();
    for (n, name) in nodes.iter().zip(&names) {
        let dir = t.join(format!("fs-{name}"));
        std::fs::create_dir(&dir).unwrap();
        let node = open_node(&out.join(format!("{name}.img.xz")), &dir);
        assert_eq!(cat(&node.root, "/etc/hostname"), format!("{name}\n"));
        // Its own disk id, recorded in the manifest and named by cmdline.txt and fstab.
        assert_eq!(n["disk_id"].as_str(), Some(node.disk_id.as_str()));
        assert_ne!(
            node.disk_id,
            expect("bookworm")["disk_id"].as_str().unwrap()
        );
        let cmdline = String::from_utf8(mtype(&node.boot, "/cmdline.txt")).unwrap();
        assert!(
            cmdline.contains(&format!("root=PARTUUID={}-02 ", node.disk_id)),
            "{cmdline}"
        );
        let fstab = cat(&node.root, "/etc/fstab");
        for p in ["01", "02"] {
            assert!(
                fstab.contains(&format!("PARTUUID={}-{p} ", node.disk_id)),
                "{fstab}"
            );
        }
        let host = key_out(
            &node.root,
            "/etc/ssh/pibake_host_ed25519_key",
            &keys,
            &format!("host-{name}"),
        );
        assert_eq!(Some(fingerprint(&host).as_str()), n["host_key"].as_str());
        let public = cat(&node.root, "/etc/ssh/pibake_host_ed25519_key.pub");
        assert!(public.starts_with(&public_of(&host)), "{public}");
        let st = debugfs(&node.root, "stat /etc/ssh/pibake_host_ed25519_key");
        assert!(
            st.contains("Mode:  0600") && st.contains("User:     0"),
            "{st}"
        );
        // sshd accepts the drop-in, with the host key it names.
        let conf = cat(&node.root, "/etc/ssh/sshd_config.d/50-pibake.conf");
        assert!(
            conf.contains("HostKey /etc/ssh/pibake_host_ed25519_key"),
            "{conf}"
        );
        let drop_in = dir.join("50-pibake.conf");
        std::fs::write(
            &drop_in,
            conf.replace("/etc/ssh/pibake_host_ed25519_key", host.to_str().unwrap()),
        )
        .unwrap();
        let main = dir.join("sshd_config");
        std::fs::write(&main, format!("Include {}\n", drop_in.display())).unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        ok(
            Command::new("/usr/sbin/sshd")
                .arg("-t")
                .arg("-f")
                .arg(&main),
            "sshd -t",
        );
        opened.push(node);
    }
    let mut ids: Vec<&str> = opened.iter().map(|n| n.disk_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), opened.len(), "disk ids shared between nodes");
    let master = &opened[0];

    // The master knows every host key: ssh-keygen finds each node, by each of its names, in
    // its known hosts with the key that node really has.
    let known = t.join("ssh_known_hosts");
    std::fs::write(&known, cat(&master.root, "/etc/ssh/ssh_known_hosts")).unwrap();
    for (i, name) in names.iter().enumerate() {
        let want = public_of(&keys.join(format!("host-{name}")));
        let addr = nodes[i]["address"].as_str().unwrap();
        for alias in [name.to_string(), format!("{name}.t.lan"), addr.to_string()] {
            let found = ok(
                Command::new("ssh-keygen")
                    .arg("-F")
                    .arg(&alias)
                    .arg("-f")
                    .arg(&known),
                "ssh-keygen -F",
            );
            assert!(found.contains(&want), "{alias}: {found}");
        }
    }
    // The cluster key: private on the master (0600, the user's), public on every worker.
    let client = key_out(&master.root, "/home/pi/.ssh/id_ed25519", &keys, "client");
    let st = debugfs(&master.root, "stat /home/pi/.ssh/id_ed25519");
    assert!(
        st.contains("Mode:  0600") && st.contains("User:  1000"),
        "{st}"
    );
    let client_pub = public_of(&client);
    for (node, name) in opened.iter().zip(&names).skip(1) {
        let ak = cat(&node.root, "/home/pi/.ssh/authorized_keys");
        assert!(ak.contains(&client_pub), "{name}: {ak}");
        let f = t.join(format!("ak-{name}"));
        std::fs::write(&f, &ak).unwrap();
        assert_eq!(fingerprint(&f), fingerprint(&client), "{name}");
        // A worker's /etc/hosts names the master and itself; the rest come from its DNS.
        let hosts = cat(&node.root, "/etc/hosts");
        assert!(hosts.contains("192.168.5.1\tboss.t.lan boss"), "{hosts}");
        assert!(hosts.contains(&format!("{name}.t.lan {name}")), "{hosts}");
        // And the machine it logs in from is known to it.
        let k = cat(&node.root, "/etc/ssh/ssh_known_hosts");
        assert!(k.contains(&public_of(&keys.join("host-boss"))), "{k}");
    }

    // The master's dnsmasq reserves every worker, and dnsmasq accepts the result.
    let dns = cat(&master.root, "/etc/pibake/dnsmasq.conf");
    for want in [
        "dhcp-host=dc:a6:32:01:36:c2,node01,",
        "dhcp-host=node02,",
        "dhcp-host=node03,",
        "domain=t.lan",
    ] {
        assert!(dns.contains(want), "no {want} in\n{dns}");
    }
    let f = t.join("dnsmasq.conf");
    std::fs::write(&f, &dns).unwrap();
    ok(
        Command::new("dnsmasq").arg("--test").arg("-C").arg(&f),
        "dnsmasq --test",
    );
    // The host lists in the user's home: plain, and a fabfile Python can read.
    assert_eq!(
        cat(&master.root, "/home/pi/cluster/hosts"),
        "node01\nnode02\nnode03\n"
    );
    let fab = t.join("fabfile.py");
    std::fs::write(&fab, cat(&master.root, "/home/pi/cluster/fabfile.py")).unwrap();
    let workers = ok(
        Command::new("python3").arg("-c").arg(format!(
            "import ast; t = ast.parse(open('{}').read()); \
             print([ast.literal_eval(n.value) for n in t.body if isinstance(n, ast.Assign)][0])",
            fab.display()
        )),
        "python3",
    );
    assert_eq!(workers.trim(), "['node01', 'node02', 'node03']");
    assert!(mtype(&master.boot, "/cmdline.txt").starts_with(b"console="));

    // Built again into the same directory: nothing is written, nothing changes.
    let first = images(&out);
    said.push_str(&build(&inv, &out));
    assert_eq!(images(&out), first);
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cluster.manifest.json")).unwrap()).unwrap();
    assert!(
        again["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["written"] == "unchanged"),
        "{again:#}"
    );

    // A fourth worker: built from scratch into another directory, the first three come out
    // byte for byte as before (so an incremental rebuild that skips them is right), and the
    // master, which learns of node04, changes.
    std::fs::write(
        &inv,
        inventory(&base, &["node01", "node02", "node03", "node04"]),
    )
    .unwrap();
    let out2 = t.join("out2");
    said.push_str(&build(&inv, &out2));
    let second = images(&out2);
    for (a, b) in first.iter().zip(&second) {
        if a.0 == "boss.img.xz" {
            assert_ne!(a.1, b.1, "the master did not learn of node04");
        } else {
            assert_eq!(a, b, "{} changed when node04 was added", a.0);
        }
    }
    assert_eq!(second.len(), 5);
    // In place: only the master and node04 are written.
    said.push_str(&build(&inv, &out));
    assert_eq!(images(&out), second);
    let third: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cluster.manifest.json")).unwrap()).unwrap();
    let written: Vec<&str> = third["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["written"] != "unchanged")
        .map(|n| n["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(written, ["boss", "node04"]);

    // No secret anywhere: not in what pibake printed, the plan, or any manifest.
    let (code, plan) = run(&["cluster", "plan", inv.to_str().unwrap()]);
    assert_eq!(code, 0, "{plan}");
    said.push_str(&plan);
    for dir in [&out, &out2] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.to_string_lossy().ends_with(".json") {
                said.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut secret_lines = vec![PASSWORD.to_string(), PSK.to_string()];
    for e in std::fs::read_dir(&secrets).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none() {
            let text = std::fs::read_to_string(&p).unwrap();
            secret_lines.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_string),
            );
        }
    }
    for s in &secret_lines {
        assert!(!said.contains(s.as_str()), "a secret was shown: {s}");
    }
}

#[test]
fn an_inventory_error_is_refused_at_its_line_before_any_key_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = tmp.path().join("bad.toml");
    std::fs::write(
        &inv,
        format!(
            "{}\n[[worker]]\nhostname = \"node01\"\n",
            inventory(&fixture_xz("bookworm"), &["node01"])
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let (code, said) = run(&[
        "cluster",
        "build",
        inv.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{said}");
    let line = inventory(&fixture_xz("bookworm"), &["node01"])
        .lines()
        .count()
        + 3;
    assert!(said.contains(&format!("bad.toml:{line}:")), "{said}");
    assert!(said.contains("node01"), "{said}");
    assert!(!out.exists() && !tmp.path().join("bad.secrets").exists());
}

/// `cluster flash` writes the node's image as the last build made it (found in the default
/// images directory), and refuses with exit 2, writing nothing, when the node is unknown, the
/// inventory changed since, or the image was touched after the build.
#[test]
fn cluster_flash_writes_the_built_node_and_refuses_stale_images() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let inv = t.join("lab.toml");
    let base = crate::common::fixture("bookworm");
    std::fs::write(&inv, inventory(&base, &["node01"])).unwrap();
    let (code, text) = run(&["cluster", "build", inv.to_str().unwrap(), "--format", "img"]);
    assert_eq!(code, 0, "{text}");
    let dir = t.join("lab.images");
    let image = dir.join("node01.img");
    assert!(image.is_file(), "{text}");

    let card = t.join("card.img");
    let card_len = std::fs::metadata(&image).unwrap().len();
    std::fs::File::create(&card)
        .unwrap()
        .set_len(card_len)
        .unwrap();
    let flash = |node: &str| {
        run(&[
            "cluster",
            "flash",
            inv.to_str().unwrap(),
            node,
            card.to_str().unwrap(),
            "--yes",
        ])
    };
    let (code, text) = flash("node01");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("node01 (worker, 192.168.5."), "{text}");
    assert_eq!(
        sha256(&card),
        sha256(&image),
        "the card is not node01's image"
    );

    let zero_card = || {
        std::fs::File::create(&card)
            .unwrap()
            .set_len(card_len)
            .unwrap()
    };
    zero_card();
    let blank = sha256(&card);
    let (code, text) = flash("node09");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("no node \"node09\"") && text.contains("boss, node01"),
        "{text}"
    );

    // A touched image is not the one the build wrote.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&image)
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let (code, text) = flash("node01");
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("is not the image `cluster build` wrote"),
        "{text}"
    );

    // An inventory edited after the build.
    let mut body = std::fs::read_to_string(&inv).unwrap();
    body.push_str("\n[[worker]]\nhostname = \"node02\"\n");
    std::fs::write(&inv, body).unwrap();
    let (code, text) = flash("node01");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("changed since the images"), "{text}");
    assert_eq!(sha256(&card), blank, "a refused flash wrote to the card");
}

/// A second build into the same directory waits for the first (here a `flock` holding the
/// directory's lock), says what it waits for, and then builds.
#[test]
fn a_cluster_build_waits_for_another_into_the_same_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let inv = t.join("lab.toml");
    std::fs::write(&inv, inventory(&crate::common::fixture("bookworm"), &[])).unwrap();
    let dir = t.join("lab.images");
    std::fs::create_dir(&dir).unwrap();
    let lock = dir.join(".pibake-cluster.lock");
    let mut holder = Command::new("flock")
        .args([lock.to_str().unwrap(), "sleep", "4"])
        .spawn()
        .expect("flock (util-linux)");
    // Wait until the holder really holds it.
    let held = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !Command::new("flock")
            .args(["-n", lock.to_str().unwrap(), "true"])
            .status()
            .unwrap()
            .success()
    });
    assert!(held, "flock never took the lock");
    let (code, text) = run(&["cluster", "build", inv.to_str().unwrap(), "--format", "img"]);
    holder.wait().unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("waiting for another cluster build into"),
        "{text}"
    );
    assert!(dir.join("boss.img").is_file());
}

/// `cluster verify` rebuilds every node (the master with the stack it was built with) and finds
/// them byte-identical; a recorded hash that is not what the inputs give is reported by node,
/// exit 1. `pibake verify` on a node's own manifest points at `cluster verify`.
#[test]
fn cluster_verify_rebuilds_every_node_and_names_the_ones_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let inv = t.join("lab.toml");
    std::fs::write(
        &inv,
        inventory(&crate::common::fixture("bookworm"), &["node01"]),
    )
    .unwrap();
    let i = inv.to_str().unwrap();
    let (code, text) = run(&[
        "cluster", "build", i, "--format", "img", "--stack", "modern",
    ]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(&["cluster", "verify", i]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("reproduced: all 2 nodes byte-identical"),
        "{text}"
    );
    let dir = t.join("lab.images");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("verify"))
        .collect();
    assert!(leftovers.is_empty(), "scratch left behind");

    let node = dir.join("node01.img.manifest.json");
    let (code, text) = run(&["verify", node.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("run `pibake cluster verify"), "{text}");

    let path = dir.join("cluster.manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["nodes"][1]["sha256"] = "0".repeat(64).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let (code, text) = run(&["cluster", "verify", i]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("1 of 2 nodes differ (node01)"), "{text}");
}
