//! A whole cluster from one inventory: every node's identity settled together ([`inventory`]),
//! and what each node learns of the others (host names, reservations), computed once from it.
//!
//! [`build`] bakes every node from one base; [`trust`] holds the keys that let the nodes know
//! each other without prompts.

pub mod build;
pub mod inventory;
mod item;
pub mod pick;
pub mod secrets;
pub mod trust;
pub mod verify;

use std::fmt::Write as _;

pub use inventory::{Inventory, LanDefaults, Node};

impl Inventory {
    /// Every node, master first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(&self.workers)
    }

    /// The nodes `node` is told about at build time: the master knows every node; a worker
    /// knows the master and itself, and finds the others through the master's DNS. So adding a
    /// worker changes only the master's image and its own.
    pub fn known_by<'a>(&'a self, node: &'a Node) -> Vec<&'a Node> {
        if node.role == "master" {
            self.nodes().collect()
        } else {
            vec![&self.master, node]
        }
    }

    /// `node`'s MBR disk identifier: the inventory's `[image] disk_id` for it when given, else
    /// derived from the cluster's and the node's names, so each card differs from the others
    /// and from the base, and a rebuild gives the same one.
    pub fn disk_id(&self, node: &Node) -> String {
        use sha2::{Digest, Sha256};
        if let Some(given) = node
            .sections
            .get("image")
            .and_then(|i| i.get("disk_id"))
            .and_then(|v| v.get_ref().as_str())
            .and_then(crate::overlay::parse_disk_id)
        {
            return given;
        }
        let mut h = Sha256::new();
        for part in ["pibake disk id", &self.name, &node.hostname] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let d = h.finalize();
        // Zero means "no id" to some tools; take the next four bytes then (never both zero in
        // practice, and a zero id is not one anyway).
        let id = if d[..4].iter().any(|&b| b != 0) {
            &d[..4]
        } else {
            &d[4..8]
        };
        hex::encode(id)
    }

    /// `node`'s cloud-init instance id: the cluster's name and the node's.
    pub fn instance_id(&self, node: &Node) -> String {
        format!("{}-{}", self.name, node.hostname)
    }

    /// The `/etc/hosts` lines of every node, master first (the master's own `/etc/hosts`, which
    /// its dnsmasq serves to the workers).
    pub fn hosts_lines(&self) -> Vec<String> {
        self.hosts_lines_of(self.nodes())
    }

    /// The `/etc/hosts` lines of `nodes`: each by its name in the cluster's domain and by its
    /// short name, so `ssh node03` works.
    fn hosts_lines_of<'a>(&self, nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
        nodes
            .into_iter()
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
    /// and `[cluster]` with the domain, the `/etc/hosts` lines of the nodes it knows and (for
    /// the master) the reservations and the worker list; with `trust`, also its host key, the
    /// host keys of the nodes it knows, and the cluster key (private half on the master, public
    /// half authorised on the workers). Values from the inventory keep their place in it.
    pub fn recipe(
        &self,
        node: &Node,
        text: &str,
        trust: Option<&trust::Trust>,
    ) -> crate::recipe::Document {
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
        n.entry("instance_id".into())
            .or_insert_with(|| made(Value::String(self.instance_id(node))));
        sections
            .entry("image".into())
            .or_default()
            .entry("disk_id".into())
            .or_insert_with(|| made(Value::String(self.disk_id(node))));
        let c = sections.entry("cluster".into()).or_default();
        c.insert("domain".into(), made(Value::String(self.domain.clone())));
        let known = self.known_by(node);
        c.insert(
            "hosts".into(),
            strings(self.hosts_lines_of(known.iter().copied())),
        );
        let master = node.role == "master";
        if master {
            let values = self.reservations();
            let values = values
                .iter()
                .map(|r| r.trim_start_matches("dhcp-host=").to_string());
            c.insert("reservations".into(), strings(values.collect()));
            let workers = self.workers.iter().map(|w| w.hostname.clone());
            c.insert("workers".into(), strings(workers.collect()));
        }
        if let Some(t) = trust {
            if let Some(key) = t.hosts.get(&node.hostname) {
                let private = Value::String(key.private_openssh());
                c.insert("host_key".into(), made(private));
                let public = Value::String(key.public_line());
                c.insert("host_key_public".into(), made(public));
            }
            let lines = known.iter().filter_map(|n| t.known_hosts_line(self, n));
            c.insert("known_hosts".into(), strings(lines.collect()));
            if master {
                let private = Value::String(t.client.private_openssh());
                c.insert("client_key".into(), made(private));
                let public = Value::String(t.client.public_line());
                c.insert("client_key_public".into(), made(public));
            } else {
                c.insert(
                    "authorized_keys".into(),
                    strings(vec![t.client.public_line()]),
                );
            }
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
            let disk = self.disk_id(n);
            let _ = writeln!(
                s,
                "  {:<8} {:<16} {:<15} disk {disk}  {how}{assigned}",
                n.role, n.hostname, n.address
            );
        }
        let _ = writeln!(
            s,
            "the master's /etc/hosts gains (a worker's: the master and itself; it asks the master's DNS for the rest)"
        );
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
