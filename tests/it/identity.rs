//! What makes one card differ from its clones: a new MBR disk identifier with `cmdline.txt` and
//! `fstab` rewritten to match (read back by sfdisk, mtools and debugfs), a machine-id baked
//! into the base cleared the way the release's own images ship it, and cloud-init's instance id.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{
    RELEASES, assert_e2fsck_clean, assert_fsck_vfat_clean, debugfs, debugfs_cat, expect, extract,
    fixture, fixture_with_root, mtype, pibake_in, test_cache,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `(label-id, [(start byte, length)])` of a raw image, as sfdisk reads it.
fn sfdisk(image: &Path) -> (String, Vec<(u64, u64)>) {
    let o = Command::new("sfdisk")
        .args(["--json", s(image)])
        .output()
        .expect("sfdisk");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &v["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect();
    (t["id"].as_str().unwrap().to_string(), parts)
}

/// The boot and root filesystems of `image`, extracted into `dir`.
fn filesystems_in(image: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (_, parts) = sfdisk(image);
    let name = image.file_name().unwrap().to_string_lossy();
    let boot = dir.join(format!("{name}.boot.vfat"));
    let root = dir.join(format!("{name}.root.ext4"));
    extract(image, parts[0].0, parts[0].1, &boot);
    extract(image, parts[1].0, parts[1].1, &root);
    (boot, root)
}

/// The boot and root filesystems of a built `image`, extracted beside it.
fn filesystems(image: &Path) -> (PathBuf, PathBuf) {
    filesystems_in(image, image.parent().unwrap())
}

/// What `pibake plan` prints for the recipe `build` last wrote into `dir`, on `base`.
fn plan(dir: &Path, base: &Path) -> String {
    let o = pibake_in(&test_cache())
        .args(["plan", s(&dir.join("recipe.toml")), "--base", s(base)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn build(dir: &Path, base: &Path, body: &str, out: &str) -> std::process::Output {
    let recipe = dir.join("recipe.toml");
    std::fs::write(&recipe, body).unwrap();
    let out = dir.join(out);
    pibake_in(&test_cache())
        .args(["build", s(&recipe), "--base", s(base), "-o", s(&out)])
        .output()
        .unwrap()
}

/// A new disk id lands in the MBR and in both files that name it, on every release, and the
/// filesystems stay clean; the base's id is named nowhere any more.
#[test]
fn a_new_disk_id_is_written_with_cmdline_and_fstab_to_match() {
    for release in RELEASES {
        let dir = tempfile::tempdir().unwrap();
        let old = expect(release)["disk_id"].as_str().unwrap().to_string();
        let body = "[node]\nhostname = \"ident\"\n[image]\ndisk_id = \"0xC0FFEE42\"\n";
        let o = build(dir.path(), &fixture(release), body, "out.img");
        assert!(
            o.status.success(),
            "{release}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let img = dir.path().join("out.img");
        let (id, _) = sfdisk(&img);
        assert_eq!(id, "0xc0ffee42", "{release}");
        let (boot, root) = filesystems(&img);
        assert_fsck_vfat_clean(&boot);
        assert_e2fsck_clean(&root);
        let cmdline = String::from_utf8(mtype(&boot, "/cmdline.txt")).unwrap();
        assert!(
            cmdline.contains("root=PARTUUID=c0ffee42-02 "),
            "{release}: {cmdline}"
        );
        let fstab = String::from_utf8(debugfs_cat(&root, "/etc/fstab")).unwrap();
        assert!(
            fstab.contains("PARTUUID=c0ffee42-01 "),
            "{release}: {fstab}"
        );
        assert!(
            fstab.contains("PARTUUID=c0ffee42-02 "),
            "{release}: {fstab}"
        );
        assert!(
            !cmdline.contains(&old) && !fstab.contains(&old),
            "{release}"
        );
        // Only the id changed in either file.
        assert_eq!(
            fstab.replace("c0ffee42", &old),
            String::from_utf8(debugfs_cat(
                &filesystems_in(&fixture(release), dir.path()).1,
                "/etc/fstab"
            ))
            .unwrap(),
            "{release}"
        );
        let plan = plan(dir.path(), &fixture(release));
        assert!(
            plan.contains(&format!("disk id    {old} -> c0ffee42")),
            "{plan}"
        );
    }
}

/// The patch-only `.img.xz` route carries the new first sector too (decoded by xz itself).
#[test]
fn a_new_disk_id_survives_the_xz_patch_route() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[node]\nhostname = \"ident\"\n[image]\ndisk_id = \"0badcafe\"\n";
    let base = crate::common::fixture_xz("bookworm");
    let o = build(dir.path(), &base, body, "out.img.xz");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let raw = dir.path().join("out.img");
    let dec = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "xz -dc {} > {}",
            s(&dir.path().join("out.img.xz")),
            s(&raw)
        ))
        .status()
        .unwrap();
    assert!(dec.success());
    assert_eq!(sfdisk(&raw).0, "0x0badcafe");
    let (boot, root) = filesystems(&raw);
    assert!(
        String::from_utf8(mtype(&boot, "/cmdline.txt"))
            .unwrap()
            .contains("root=PARTUUID=0badcafe-02")
    );
    assert_e2fsck_clean(&root);
}

/// Bad ids and GPT images are refused before anything is written.
#[test]
fn disk_ids_that_cannot_be_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (id, why) in [("0x00000000", "not all zero"), ("12345", "8 hex digits")] {
        let body = format!("[node]\nhostname = \"ident\"\n[image]\ndisk_id = \"{id}\"\n");
        let o = build(dir.path(), &fixture("bookworm"), &body, "bad.img");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(why) && err.contains(":4:"), "{err}");
        assert!(!dir.path().join("bad.img").exists());
    }
    let body = "[node]\nhostname = \"ident\"\n[image]\ndisk_id = \"1a2b3c4d\"\n";
    let o = build(dir.path(), &fixture("gpt"), body, "bad.img");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("gpt partition table"), "{err}");
    assert!(!dir.path().join("bad.img").exists());
}

/// A base that carries a real machine-id (and dbus's own copy of it, NetworkManager's secret
/// key and systemd's random seed, as a booted card does) gets back what the release ships:
/// machine-id empty on bookworm, `uninitialized` on trixie, mode 0444, the rest removed; a
/// base without them plans nothing for them.
#[test]
fn a_machine_id_baked_into_the_base_is_cleared() {
    let body = "[node]\nhostname = \"ident\"\n";
    for (release, want) in [("bookworm", ""), ("trixie", "uninitialized\n")] {
        let dir = tempfile::tempdir().unwrap();
        let clean = build(dir.path(), &fixture(release), body, "clean.img");
        assert!(clean.status.success());
        let clean_plan = plan(dir.path(), &fixture(release));
        assert!(!clean_plan.contains("/etc/machine-id"), "{clean_plan}");
        assert!(!clean_plan.contains("random-seed"), "{clean_plan}");
        // The fixtures ship NetworkManager's secret key, as an image whose build ran it can.
        assert!(
            clean_plan.contains("/var/lib/NetworkManager/secret_key"),
            "{clean_plan}"
        );

        let base = fixture_with_root(
            release,
            dir.path(),
            "printf '0123456789abcdef0123456789abcdef\\n' > /tmp/pibake-mid && \
             debugfs -w -R 'rm /etc/machine-id' FS >/dev/null 2>&1 && \
             debugfs -w -R 'write /tmp/pibake-mid /etc/machine-id' FS >/dev/null && \
             debugfs -w -R 'mkdir /var/lib/dbus' FS >/dev/null 2>&1; \
             debugfs -w -R 'rm /var/lib/dbus/machine-id' FS >/dev/null 2>&1; \
             debugfs -w -R 'write /tmp/pibake-mid /var/lib/dbus/machine-id' FS >/dev/null; \
             debugfs -w -R 'mkdir /var/lib/NetworkManager' FS >/dev/null 2>&1; \
             debugfs -w -R 'write /tmp/pibake-mid /var/lib/NetworkManager/secret_key' FS >/dev/null; \
             debugfs -w -R 'write /tmp/pibake-mid /var/lib/systemd/random-seed' FS >/dev/null",
        );
        let plan = plan(dir.path(), &base);
        assert!(plan.contains("the base carries a machine-id"), "{plan}");
        assert!(
            plan.contains("a second copy of the base's machine-id"),
            "{plan}"
        );
        let o = build(dir.path(), &base, body, "out.img");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (_, root) = filesystems(&dir.path().join("out.img"));
        assert_e2fsck_clean(&root);
        assert_eq!(
            String::from_utf8(debugfs_cat(&root, "/etc/machine-id")).unwrap(),
            want,
            "{release}"
        );
        let st = debugfs(&root, "stat /etc/machine-id");
        assert!(st.contains("Mode:  0444"), "{st}");
        for p in [
            "/var/lib/dbus/machine-id",
            "/var/lib/NetworkManager/secret_key",
            "/var/lib/systemd/random-seed",
        ] {
            let gone = debugfs(&root, &format!("stat {p}"));
            assert!(!gone.contains("Inode:"), "{release}: {p} kept: {gone}");
        }
    }
}

/// On a cloud-init image the node's instance id replaces the image's in `meta-data`.
#[test]
fn cloud_init_gets_the_nodes_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[node]\nhostname = \"ident\"\ninstance_id = \"lab-ident\"\n";
    let o = build(dir.path(), &fixture("trixie"), body, "out.img");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (boot, _) = filesystems(&dir.path().join("out.img"));
    assert_fsck_vfat_clean(&boot);
    let meta = String::from_utf8(mtype(&boot, "/meta-data")).unwrap();
    let ids: Vec<_> = meta
        .lines()
        .filter(|l| l.starts_with("instance-id:"))
        .collect();
    assert_eq!(ids, ["instance-id: lab-ident"], "{meta}");
    assert!(meta.starts_with("# Instance metadata"), "{meta}");
}
