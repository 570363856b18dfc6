//! `pibake cluster plan`: an inventory read whole, each node's identity settled, what the nodes
//! learn of each other shown, and conflicts refused at their line. The reservations it shows are
//! judged by dnsmasq itself.

use std::process::Command;

use crate::common::{pibake, root_dir};

fn plan(path: &std::path::Path) -> (i32, String, String) {
    let o = pibake(&["cluster", "plan", path.to_str().unwrap()]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_example_inventory_plans_every_node_and_dnsmasq_accepts_its_reservations() {
    let (code, out, err) = plan(&root_dir().join("examples/cluster.toml"));
    assert_eq!(code, 0, "{err}");
    for want in [
        "nodes      6 (1 master, 5 workers)",
        "192.168.5.104\tnode04.cluster.lan node04",
        "dhcp-host=dc:a6:32:01:36:c2,gpu01,192.168.5.100",
        "dhcp-host=node04,192.168.5.104",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    // The Wi-Fi key of the example never appears in a plan.
    assert!(!out.contains("correct horse"), "{out}");
    let dnsmasq: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("the master's dnsmasq gains"))
        .skip(1)
        .map(str::trim)
        .collect();
    assert!(dnsmasq.len() >= 6, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "port=0\ndhcp-range=192.168.5.2,192.168.5.64,24h\n{}\n",
            dnsmasq.join("\n")
        ),
    )
    .unwrap();
    let o = Command::new("dnsmasq")
        .arg("--test")
        .arg(format!("--conf-file={}", conf.display()))
        .output()
        .expect("dnsmasq (make deps installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && said.contains("syntax check OK"),
        "{said}"
    );
}

#[test]
fn a_conflict_is_refused_at_its_line_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("cluster.toml");
    std::fs::write(
        &inv,
        "[cluster]\nname = \"c\"\n\n[[worker]]\nhostname = \"a\"\naddress = \"192.168.5.120\"\n\n\
         [workers]\npattern = \"n{}\"\ncount = 3\nfirst_address = \"192.168.5.118\"\n",
    )
    .unwrap();
    let (code, out, err) = plan(&inv);
    assert_eq!(code, 2, "{out}{err}");
    let line = format!("{}:11:17: 192.168.5.120 (n3) is also a's", inv.display());
    assert!(err.contains(&line), "{err}");
    assert!(out.is_empty(), "{out}");
}

/// What the plan shows, given to the nodes' recipes as `[cluster]`, lands where each reads it:
/// the master's dnsmasq (domain, local names, reservations; `dnsmasq --test` accepts it) and
/// every node's `/etc/hosts`. A recipe without `[cluster]` gets none of it.
#[test]
fn master_and_worker_recipes_carry_the_cluster_into_the_image() {
    use crate::common::{debugfs_cat, expect, extract, fixture, part, pibake_ok_in, test_cache};
    let tmp = tempfile::tempdir().unwrap();
    let hosts = "hosts = [\"192.168.5.1\\tmaster.lab.lan master\", \"192.168.5.101\\tnode01.lab.lan node01\"]\n";
    let master = format!(
        "[node]\nhostname = \"master\"\n[user]\nname = \"pi\"\npassword = \"pw-for-tests\"\n\
         [cluster]\ndomain = \"lab.lan\"\n{hosts}\
         reservations = [\"dc:a6:32:01:36:c2,node01,192.168.5.101\", \"node02,192.168.5.102\"]\n"
    );
    let worker = format!(
        "[node]\nhostname = \"node01\"\nrole = \"worker\"\n[user]\nname = \"pi\"\npassword = \"pw-for-tests\"\n\
         [cluster]\ndomain = \"lab.lan\"\n{hosts}"
    );
    let base = fixture("bookworm");
    let e = expect("bookworm");
    let (ro, rl) = part(&e, 2);
    let root_of = |name: &str, recipe: &str| {
        let r = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&r, recipe).unwrap();
        let out = tmp.path().join(format!("{name}.img"));
        let arg = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let (r, b, o) = (arg(&r), arg(&base), arg(&out));
        pibake_ok_in(&test_cache(), &["build", &r, "--base", &b, "-o", &o]);
        let root = tmp.path().join(format!("{name}.root"));
        extract(&out, ro, rl, &root);
        crate::common::assert_e2fsck_clean(&root);
        root
    };
    let cat = |root: &std::path::Path, p: &str| String::from_utf8(debugfs_cat(root, p)).unwrap();

    let m = root_of("master", &master);
    let conf = cat(&m, "/etc/pibake/dnsmasq.conf");
    for want in [
        "domain=lab.lan\nexpand-hosts\nlocal=/lab.lan/\n",
        "dhcp-host=dc:a6:32:01:36:c2,node01,192.168.5.101\n",
        "dhcp-host=node02,192.168.5.102\n",
    ] {
        assert!(conf.contains(want), "no {want:?} in\n{conf}");
    }
    let f = tmp.path().join("dnsmasq.conf");
    std::fs::write(&f, &conf).unwrap();
    let o = Command::new("dnsmasq")
        .args(["--test", "-C", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = root_of("worker", &worker);
    for root in [&m, &w] {
        let h = cat(root, "/etc/hosts");
        assert!(
            h.contains(
                "192.168.5.1\tmaster.lab.lan master\n192.168.5.101\tnode01.lab.lan node01\n"
            ),
            "{h}"
        );
    }
    // Without [cluster], nothing of it.
    let plain = root_of(
        "plain",
        "[node]\nhostname = \"m\"\n[user]\nname = \"pi\"\npassword = \"pw-for-tests\"\n",
    );
    assert!(!cat(&plain, "/etc/pibake/dnsmasq.conf").contains("dhcp-host"));
    assert!(!cat(&plain, "/etc/hosts").contains("pibake cluster"));
}

/// Each node's recipe sections are checked against its role, as its build would check them,
/// with the error at the inventory's line.
#[test]
fn node_settings_are_checked_against_their_role_at_the_inventory_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[master.wifi]\nssid = \"up\"\npsk = \"short\"\ncountry = \"GB\"\n",
            "3:7: Wi-Fi psk must be 8 to 63 characters",
        ),
        (
            "[[worker]]\nhostname = \"n1\"\n[worker.network]\ndhcp_range = [\"192.168.5.2\", \"192.168.5.9\"]\n",
            "4:14: unknown field `dhcp_range` in [network]",
        ),
        (
            "[defaults.user]\nname = \"root\"\n[[worker]]\nhostname = \"n1\"\n",
            "2:8:",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let inv = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&inv, text).unwrap();
        let (code, _, err) = plan(&inv);
        assert_eq!(code, 2, "{text}\n{err}");
        assert!(err.contains(&format!("c{i}.toml:{want}")), "{text}\n{err}");
    }
}
