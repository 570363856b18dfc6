//! A whole cluster from one inventory: every node's identity settled together ([`inventory`]),
//! and what each node learns of the others (host names, reservations), computed once from it.
//!
//! This is the first part of issue 14: the inventory and `pibake cluster plan`. Building every
//! node (the worker role, keys, per-node identity) comes next.

pub mod inventory;
mod item;
pub mod secrets;

use std::fmt::Write as _;

pub use inventory::{Inventory, LanDefaults, Node};

impl Inventory {
    /// Every node, master first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(&self.workers)
    }

    /// The lines every node's `/etc/hosts` gains: each node by its name in the cluster's
    /// domain and by its short name, master first, so `ssh node03` works from any node.
    pub fn hosts_lines(&self) -> Vec<String> {
        self.nodes()
            .map(|n| {
                format!(
                    "{}\t{}.{} {}",
                    n.address, n.hostname, self.domain, n.hostname
                )
            })
            .collect()
    }

    /// The master's dnsmasq reservations, one `dhcp-host=` per worker: by MAC when the
    /// inventory gives one, else by the host name the worker's DHCP client sends.
    pub fn reservations(&self) -> Vec<String> {
        self.workers
            .iter()
            .map(|w| match &w.mac {
                Some(mac) => format!("dhcp-host={mac},{},{}", w.hostname, w.address),
                None => format!("dhcp-host={},{}", w.hostname, w.address),
            })
            .collect()
    }

    /// The recipe of `node`: the inventory's sections for it, its `[node]` host name and role,
    /// and `[cluster]` with the domain, every node's `/etc/hosts` line and (for the master) the
    /// reservations. Values from the inventory keep their place in it, for errors.
    pub fn recipe(&self, node: &Node, text: &str) -> crate::recipe::Document {
        use toml::{Spanned, Value};
        let made = |v: Value| Spanned::new(0..0, v);
        let strings =
            |v: Vec<String>| made(Value::Array(v.into_iter().map(Value::String).collect()));
        let mut sections = node.sections.clone();
        let n = sections.entry("node".into()).or_default();
        n.insert(
            "hostname".into(),
            made(Value::String(node.hostname.clone())),
        );
        n.insert("role".into(), made(Value::String(node.role.clone())));
        let c = sections.entry("cluster".into()).or_default();
        c.insert("domain".into(), made(Value::String(self.domain.clone())));
        c.insert("hosts".into(), strings(self.hosts_lines()));
        if node.role == "master" {
            let values = self.reservations();
            let values = values
                .iter()
                .map(|r| r.trim_start_matches("dhcp-host=").to_string());
            c.insert("reservations".into(), strings(values.collect()));
        }
        crate::recipe::Document::from_sections(&self.file, text, sections)
    }

    /// The plan as text: the cluster, each node's identity, and what they learn of each other.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let (net, prefix) = self.lan;
        let _ = writeln!(s, "cluster    {} (domain {})", self.name, self.domain);
        let _ = writeln!(
            s,
            "base       {}",
            self.base.as_deref().unwrap_or("(none: give --base)")
        );
        let _ = writeln!(
            s,
            "lan        {net}/{prefix}, DHCP pool {}–{}",
            self.pool.0, self.pool.1
        );
        let _ = writeln!(
            s,
            "nodes      {} (1 master, {} workers)",
            self.workers.len() + 1,
            self.workers.len()
        );
        for n in self.nodes() {
            let how = match (&n.mac, n.role.as_str()) {
                (_, "master") => "its own address".to_string(),
                (Some(mac), _) => format!("reserved for MAC {mac}"),
                (None, _) => "reserved for its host name".to_string(),
            };
            let assigned = if n.address_given {
                ""
            } else {
                " (assigned after the pool)"
            };
            let _ = writeln!(
                s,
                "  {:<8} {:<16} {:<15} {how}{assigned}",
                n.role, n.hostname, n.address
            );
        }
        let _ = writeln!(s, "every node's /etc/hosts gains");
        for l in self.hosts_lines() {
            let _ = writeln!(s, "  {l}");
        }
        let _ = writeln!(s, "the master's dnsmasq gains");
        let _ = writeln!(s, "  domain={}", self.domain);
        for l in self.reservations() {
            let _ = writeln!(s, "  {l}");
        }
        s
    }
}

/// The LAN defaults of the master role, read from its overlays' schema (`network.address`,
/// `network.dhcp_range`), so the inventory checks addresses against what a build would use.
pub fn lan_defaults(layers: &crate::overlay::Layers) -> LanDefaults {
    let mut d = LanDefaults::default();
    let net = layers.schema.inputs.get("network");
    if let Some(a) = net
        .and_then(|n| n.get("address"))
        .and_then(|i| i.default.as_ref())
        .and_then(|v| v.as_str())
    {
        d.address = a.to_string();
    }
    if let Some(toml::Value::Array(r)) = net
        .and_then(|n| n.get("dhcp_range"))
        .and_then(|i| i.default.as_ref())
        && let [lo, hi] = r.as_slice()
        && let (Some(lo), Some(hi)) = (lo.as_str(), hi.as_str())
    {
        d.dhcp_range = (lo.to_string(), hi.to_string());
    }
    d
}
