//! The `worker` role: a node that takes its LAN address from the master by DHCP, with the client
//! identifier pinned to its MAC and its host name sent, on every release, and none of the
//! master's routing. Judged by e2fsck, fsck.vfat and debugfs on the built image.

use std::path::Path;

use crate::common::{
    assert_e2fsck_clean, assert_fsck_vfat_clean, debugfs, debugfs_cat, expect, extract, fixture,
    part, pibake_ok_in, sha256, test_cache,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn cat(fs: &Path, p: &str) -> String {
    String::from_utf8(debugfs_cat(fs, p)).unwrap()
}

#[test]
fn a_worker_takes_its_address_by_dhcp_on_every_release() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("node03.toml");
    std::fs::write(
        &recipe,
        "[node]\nhostname = \"node03\"\nrole = \"worker\"\n[user]\nname = \"pi\"\npassword = \"pw-for-tests\"\n",
    )
    .unwrap();
    for release in ["bullseye", "bookworm", "trixie"] {
        let base = fixture(release);
        let before = sha256(&base);
        let out = tmp.path().join(format!("{release}-node03.img"));
        pibake_ok_in(
            &test_cache(),
            &["build", s(&recipe), "--base", s(&base), "-o", s(&out)],
        );
        assert_eq!(sha256(&base), before, "{release}: base modified");
        let e = expect(release);
        let (ro, rl) = part(&e, 2);
        let (bo, bl) = part(&e, 1);
        let (root, boot) = (tmp.path().join("root"), tmp.path().join("boot"));
        extract(&out, ro, rl, &root);
        extract(&out, bo, bl, &boot);
        assert_e2fsck_clean(&root);
        assert_fsck_vfat_clean(&boot);
        assert_eq!(cat(&root, "/etc/hostname"), "node03\n", "{release}");
        let nm = "/etc/NetworkManager/system-connections/pibake-lan.nmconnection";
        if e["facts"]["network_stack"] == "dhcpcd" {
            let conf = cat(&root, "/etc/dhcpcd.conf");
            assert!(
                conf.contains("interface eth0\nclientid\nhostname\n"),
                "{release}: {conf}"
            );
            assert!(
                !conf.lines().any(|l| l.trim_start().starts_with("static ")),
                "{release}: a static address on a worker: {conf}"
            );
        } else {
            let keyfile = cat(&root, nm);
            for want in [
                "interface-name=eth0",
                "method=auto",
                "dhcp-client-id=mac",
                "dhcp-send-hostname=true",
            ] {
                assert!(keyfile.contains(want), "{release}: no {want} in\n{keyfile}");
            }
            let st = debugfs(&root, &format!("stat {nm}"));
            assert!(st.contains("Mode:  0600"), "{release}: {st}");
        }
        // None of the master's job: no forwarding, NAT or DHCP server.
        for absent in [
            "/etc/sysctl.d/90-pibake-forward.conf",
            "/etc/systemd/system/pibake-dnsmasq.service",
            "/etc/pibake/dnsmasq.conf",
        ] {
            let st = debugfs(&root, &format!("stat {absent}"));
            assert!(!st.contains("Type:"), "{release}: {absent} exists");
        }
        std::fs::remove_file(&out).unwrap();
    }
}
