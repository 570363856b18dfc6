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
