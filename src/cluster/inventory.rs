//! The cluster inventory (`cluster.toml`): the master and every worker in one file, read into
//! plain data with every node's identity settled (host name, address, MAC) and every conflict
//! between nodes refused with the line it is on.
//!
//! ```toml
//! [cluster]
//! name = "pi"                      # default "cluster"
//! domain = "cluster.lan"           # default "cluster.lan"
//! base = "lite-arm64"              # the base image of every node
//!
//! [defaults.user]                  # recipe sections every node inherits
//! name = "pi"
//!
//! [master]
//! hostname = "master"              # default "master"
//! [master.network]                 # the master's own recipe sections
//! address = "192.168.5.1/24"
//!
//! [[worker]]                       # workers listed one by one...
//! hostname = "node01"
//! mac = "dc:a6:32:01:36:c2"        # optional: reserve by MAC, else by host name
//! address = "192.168.5.101"        # optional: else the next free one after the DHCP pool
//!
//! [workers]                        # ...or generated
//! pattern = "node{:02}"
//! count = 3
//! first_address = "192.168.5.101"  # optional
//! ```
//!
//! Addresses are checked against the master's LAN (`[master.network] address`, else the master
//! role's default) and its dynamic pool (`dhcp_range`): a reserved address inside the pool could
//! be leased to someone else first.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;

use toml::Spanned;

use super::item::{Item, Mixed};
use crate::overlay::{is_label, parse_interface};
use crate::recipe::RecipeError;

/// A recipe section as written: field name to value, each with where it is in the file.
pub type Section = BTreeMap<String, Spanned<toml::Value>>;

/// What the inventory says about one node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Host name, unique in the cluster.
    pub hostname: String,
    /// `master` or `worker`.
    pub role: String,
    /// LAN address: the master's own, or the worker's reservation.
    pub address: Ipv4Addr,
    /// The worker's Ethernet MAC, lower case, when given (reservations are then by MAC).
    pub mac: Option<String>,
    /// Whether the address was given (`false`: assigned after the DHCP pool).
    pub address_given: bool,
    /// The node's recipe sections: the defaults overlaid with its own.
    pub sections: BTreeMap<String, Section>,
}

/// The whole cluster, checked.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The inventory file, for messages.
    pub file: String,
    /// Cluster name.
    pub name: String,
    /// DNS domain of the nodes.
    pub domain: String,
    /// Base image of every node, when the inventory names one.
    pub base: Option<String>,
    /// Output format of every node as a file extension (`img.xz`), when the inventory names one.
    pub format: Option<String>,
    /// The LAN: network address and prefix length.
    pub lan: (Ipv4Addr, u8),
    /// The master's dynamic pool, first and last address.
    pub pool: (Ipv4Addr, Ipv4Addr),
    /// The master.
    pub master: Node,
    /// The workers, in inventory order (listed ones first, then generated ones).
    pub workers: Vec<Node>,
}

/// Where the master role's LAN defaults come from when `[master.network]` does not say.
#[derive(Debug, Clone)]
pub struct LanDefaults {
    /// `network.address`, e.g. `192.168.5.1/24`.
    pub address: String,
    /// `network.dhcp_range`, e.g. `["192.168.5.2", "192.168.5.64"]`.
    pub dhcp_range: (String, String),
}

impl Default for LanDefaults {
    fn default() -> Self {
        Self {
            address: "192.168.5.1/24".into(),
            dhcp_range: ("192.168.5.2".into(), "192.168.5.64".into()),
        }
    }
}

/// Settings of a `[[worker]]` entry (everything else in it is a recipe section).
const WORKER_KEYS: &[&str] = &["hostname", "mac", "address"];
/// Keys of `[workers]`.
const PATTERN_KEYS: &[&str] = &["pattern", "count", "first_address"];
/// Most workers a pattern may generate: more than a /24 holds.
const MAX_GENERATED: i64 = 1000;

struct Reader<'t> {
    file: &'t str,
    text: &'t str,
}

impl Reader<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> RecipeError {
        RecipeError::at(self.file, self.text, span.start, message)
    }

    fn string(&self, v: &Spanned<toml::Value>, what: &str) -> Result<String, RecipeError> {
        match v.get_ref() {
            toml::Value::String(s) => Ok(s.clone()),
            other => Err(self.err(
                v.span(),
                format!("{what} must be a string, not {}", other.type_str()),
            )),
        }
    }

    fn ipv4(&self, v: &Spanned<toml::Value>, what: &str) -> Result<Ipv4Addr, RecipeError> {
        let s = self.string(v, what)?;
        s.parse()
            .map_err(|_| self.err(v.span(), format!("{what} {s:?} is not an IPv4 address")))
    }
}

/// The inventory as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    cluster: Section,
    #[serde(default)]
    defaults: Mixed,
    #[serde(default)]
    master: Mixed,
    #[serde(default)]
    worker: Vec<Spanned<Mixed>>,
    #[serde(default)]
    workers: Section,
}

/// The settings of `table` (keys in `keys`) as spanned values, and its recipe sections; any
/// other plain value is refused with `what` naming the table.
fn split(
    r: &Reader<'_>,
    table: &Mixed,
    keys: &[&str],
    what: &str,
) -> Result<(Section, BTreeMap<String, Section>), RecipeError> {
    let mut settings = Section::new();
    let mut sections = BTreeMap::new();
    for (k, v) in table {
        match v.get_ref() {
            Item::Table(s) if !keys.contains(&k.as_str()) => {
                sections.insert(k.clone(), s.clone());
            }
            Item::Value(x) if keys.contains(&k.as_str()) => {
                settings.insert(k.clone(), Spanned::new(v.span(), x.clone()));
            }
            _ => {
                let allowed = if keys.is_empty() {
                    "only recipe sections such as [defaults.user]".to_string()
                } else {
                    format!("{} and recipe sections", keys.join(", "))
                };
                return Err(r.err(
                    v.span(),
                    format!("unexpected {k:?} in {what}: it takes {allowed}"),
                ));
            }
        }
    }
    Ok((settings, sections))
}

/// Parse and check the inventory `text` (`file` names it in errors).
pub fn parse(file: &str, text: &str, lan_defaults: &LanDefaults) -> Result<Inventory, RecipeError> {
    let r = Reader { file, text };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        r.err(
            e.span().unwrap_or(0..0),
            e.message().trim().replace('\n', "; "),
        )
    })?;

    // [cluster]
    let cluster = &raw.cluster;
    for (k, v) in cluster {
        if !["name", "domain", "base", "format"].contains(&k.as_str()) {
            return Err(r.err(
                v.span(),
                format!("unknown key {k:?} in [cluster]: it has name, domain, base and format"),
            ));
        }
    }
    let name = match cluster.get("name") {
        Some(v) => r.string(v, "cluster name")?,
        None => "cluster".into(),
    };
    let domain = match cluster.get("domain") {
        Some(v) => {
            let d = r.string(v, "domain")?;
            if !d.split('.').all(is_label) {
                return Err(r.err(
                    v.span(),
                    format!("domain {d:?} is not a DNS name such as \"cluster.lan\""),
                ));
            }
            d
        }
        None => "cluster.lan".into(),
    };
    let base = cluster
        .get("base")
        .map(|v| r.string(v, "base"))
        .transpose()?;
    let format = match cluster.get("format") {
        Some(v) => {
            let f = r.string(v, "format")?;
            let f = f.trim_start_matches('.').to_string();
            if crate::output::Format::from_path(std::path::Path::new(&format!("x.{f}"))).is_err() {
                return Err(r.err(
                    v.span(),
                    format!(
                        "format {f:?} is not an image format pibake writes (img, img.xz, img.zst)"
                    ),
                ));
            }
            Some(f)
        }
        None => None,
    };

    // [defaults.SECTION] and the master's own sections.
    let (_, defaults) = split(&r, &raw.defaults, &[], "[defaults]")?;
    let (master_table, master_sections) = split(&r, &raw.master, &["hostname"], "[master]")?;
    let master_name = match master_table.get("hostname") {
        Some(v) => checked_hostname(&r, v)?,
        None => "master".into(),
    };
    // The LAN, from the master's network section or the role's defaults.
    let net = master_sections.get("network");
    let (address_text, address_span) = match net.and_then(|n| n.get("address")) {
        Some(v) => (r.string(v, "network.address")?, v.span()),
        None => (lan_defaults.address.clone(), 0..0),
    };
    let (master_address, prefix) = parse_interface(&address_text)
        .ok_or_else(|| r.err(address_span.clone(), format!("network.address {address_text:?} is not an address with a prefix length such as \"192.168.5.1/24\"")))?;
    let lan = (network_of(master_address, prefix), prefix);
    let pool = match net.and_then(|n| n.get("dhcp_range")) {
        Some(v) => match v.get_ref() {
            toml::Value::Array(a) if a.len() == 2 => {
                let ip = |x: &toml::Value| x.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
                match (ip(&a[0]), ip(&a[1])) {
                    (Some(lo), Some(hi)) => (lo, hi),
                    _ => {
                        return Err(r.err(
                            v.span(),
                            "dhcp_range must be two IPv4 addresses, first and last",
                        ));
                    }
                }
            }
            _ => {
                return Err(r.err(
                    v.span(),
                    "dhcp_range must be two IPv4 addresses, first and last",
                ));
            }
        },
        None => {
            let p = |s: &str| s.parse::<Ipv4Addr>().ok();
            match (p(&lan_defaults.dhcp_range.0), p(&lan_defaults.dhcp_range.1)) {
                (Some(lo), Some(hi)) => (lo, hi),
                _ => {
                    return Err(r.err(
                        0..0,
                        "the master role's default dhcp_range is not two addresses",
                    ));
                }
            }
        }
    };

    let master = Node {
        hostname: master_name,
        role: "master".into(),
        address: master_address,
        mac: None,
        address_given: true,
        sections: merge(&defaults, &master_sections),
    };

    // Workers: listed, then generated.
    let mut wanted: Vec<Wanted> = Vec::new();
    for w in &raw.worker {
        let (fields, own) = split(&r, w.get_ref(), WORKER_KEYS, "[[worker]]")?;
        let hostname = fields
            .get("hostname")
            .ok_or_else(|| r.err(w.span(), "a [[worker]] needs a hostname"))?;
        wanted.push(Wanted {
            hostname: checked_hostname(&r, hostname)?,
            hostname_span: hostname.span(),
            mac: fields.get("mac").map(|v| checked_mac(&r, v)).transpose()?,
            address: fields
                .get("address")
                .map(|v| Ok::<_, RecipeError>((r.ipv4(v, "address")?, v.span())))
                .transpose()?,
            sections: own,
        });
    }
    let pattern = &raw.workers;
    if !pattern.is_empty() {
        for (k, v) in pattern {
            if !PATTERN_KEYS.contains(&k.as_str()) {
                return Err(r.err(
                    v.span(),
                    format!(
                        "unknown key {k:?} in [workers]: it has pattern, count and first_address"
                    ),
                ));
            }
        }
        let pat = pattern.get("pattern").ok_or_else(|| {
            r.err(
                pattern.values().next().map(|v| v.span()).unwrap_or(0..0),
                "[workers] needs a pattern such as \"node{:02}\"",
            )
        })?;
        let pat_text = r.string(pat, "pattern")?;
        let count = match pattern.get("count").map(|v| (v.get_ref(), v.span())) {
            Some((toml::Value::Integer(n), _)) if (1..=MAX_GENERATED).contains(n) => *n as u32,
            Some((_, span)) => {
                return Err(r.err(
                    span,
                    format!("count must be a whole number from 1 to {MAX_GENERATED}"),
                ));
            }
            None => return Err(r.err(pat.span(), "[workers] needs a count")),
        };
        let first = pattern
            .get("first_address")
            .map(|v| Ok::<_, RecipeError>((r.ipv4(v, "first_address")?, v.span())))
            .transpose()?;
        for i in 1..=count {
            let hostname = expand(&pat_text, i).ok_or_else(|| {
                r.err(pat.span(), format!("pattern {pat_text:?} must hold one {{}} or {{:0N}} for the number, e.g. \"node{{:02}}\""))
            })?;
            if !is_label(&hostname) {
                return Err(r.err(
                    pat.span(),
                    format!("pattern {pat_text:?} gives {hostname:?}, which is not a host name"),
                ));
            }
            let address = match &first {
                Some((a, span)) => {
                    let n = u32::from(*a).checked_add(i - 1).ok_or_else(|| {
                        r.err(
                            span.clone(),
                            "first_address + count runs past 255.255.255.255",
                        )
                    })?;
                    Some((Ipv4Addr::from(n), span.clone()))
                }
                None => None,
            };
            wanted.push(Wanted {
                hostname,
                hostname_span: pat.span(),
                mac: None,
                address,
                sections: BTreeMap::new(),
            });
        }
    }

    let workers = settle(&r, &master, lan, pool, &defaults, wanted)?;
    Ok(Inventory {
        file: file.to_string(),
        name,
        domain,
        base,
        format,
        lan,
        pool,
        master,
        workers,
    })
}

/// A worker as written, before its address is settled.
struct Wanted {
    hostname: String,
    hostname_span: Range<usize>,
    mac: Option<String>,
    address: Option<(Ipv4Addr, Range<usize>)>,
    sections: BTreeMap<String, Section>,
}

/// Check names, MACs and addresses across the cluster; give workers without an address the next
/// free one after the pool.
fn settle(
    r: &Reader<'_>,
    master: &Node,
    lan: (Ipv4Addr, u8),
    pool: (Ipv4Addr, Ipv4Addr),
    defaults: &BTreeMap<String, Section>,
    wanted: Vec<Wanted>,
) -> Result<Vec<Node>, RecipeError> {
    let (net, prefix) = lan;
    let hosts = host_range(net, prefix);
    let in_pool = |a: Ipv4Addr| (u32::from(pool.0)..=u32::from(pool.1)).contains(&u32::from(a));
    let mut names = BTreeMap::from([(master.hostname.clone(), ())]);
    let mut macs = BTreeMap::new();
    let mut taken = BTreeMap::from([(u32::from(master.address), master.hostname.clone())]);
    for w in &wanted {
        if names.insert(w.hostname.clone(), ()).is_some() {
            return Err(r.err(
                w.hostname_span.clone(),
                format!("host name {:?} is used twice in the cluster", w.hostname),
            ));
        }
        if let Some(mac) = &w.mac
            && macs.insert(mac.clone(), w.hostname.clone()).is_some()
        {
            return Err(r.err(
                w.hostname_span.clone(),
                format!(
                    "MAC {mac} is given to two workers ({} and {})",
                    macs[mac], w.hostname
                ),
            ));
        }
        if let Some((a, span)) = &w.address {
            let n = u32::from(*a);
            if !hosts.contains(&n) {
                return Err(r.err(
                    span.clone(),
                    format!("{a} ({}) is outside the LAN {net}/{prefix}", w.hostname),
                ));
            }
            if in_pool(*a) {
                return Err(r.err(span.clone(), format!("{a} ({}) is inside the DHCP pool {}–{}: a reserved address must lie outside it, or the pool may lease it to someone else first", w.hostname, pool.0, pool.1)));
            }
            if let Some(other) = taken.insert(n, w.hostname.clone()) {
                let whose = if other == master.hostname {
                    format!("the master's address ({other})")
                } else {
                    format!("also {other}'s")
                };
                return Err(r.err(span.clone(), format!("{a} ({}) is {whose}", w.hostname)));
            }
        }
    }
    let mut next = u32::from(pool.1).saturating_add(1);
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let (address, given) = match w.address {
            Some((a, _)) => (a, true),
            None => {
                while taken.contains_key(&next) || in_pool(Ipv4Addr::from(next)) {
                    next += 1;
                }
                if !hosts.contains(&next) {
                    return Err(r.err(w.hostname_span.clone(), format!("no address left in {net}/{prefix} after the DHCP pool for {}: give addresses, shrink the pool or widen the LAN", w.hostname)));
                }
                taken.insert(next, w.hostname.clone());
                (Ipv4Addr::from(next), false)
            }
        };
        out.push(Node {
            hostname: w.hostname,
            role: "worker".into(),
            address,
            mac: w.mac,
            address_given: given,
            sections: merge(defaults, &w.sections),
        });
    }
    Ok(out)
}

/// `defaults` with `own` laid over it, field by field.
fn merge(
    defaults: &BTreeMap<String, Section>,
    own: &BTreeMap<String, Section>,
) -> BTreeMap<String, Section> {
    let mut out = defaults.clone();
    for (name, fields) in own {
        let s = out.entry(name.clone()).or_default();
        for (k, v) in fields {
            s.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Usable host addresses (not the network or broadcast address) of `net/prefix`, as numbers;
/// `prefix` is at most 30, as `parse_interface` ensures.
fn host_range(net: Ipv4Addr, prefix: u8) -> Range<u32> {
    let n = u32::from(net);
    let size = 1u32 << (32 - u32::from(prefix));
    n + 1..n + size - 1
}

fn network_of(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ipv4Addr::from(u32::from(a) & mask)
}

fn checked_hostname(r: &Reader<'_>, v: &Spanned<toml::Value>) -> Result<String, RecipeError> {
    let h = r.string(v, "hostname")?;
    if is_label(&h) {
        Ok(h)
    } else {
        Err(r.err(
            v.span(),
            format!(
                "hostname {h:?} is not a host name (letters, digits and inner hyphens, at most 63)"
            ),
        ))
    }
}

fn checked_mac(r: &Reader<'_>, v: &Spanned<toml::Value>) -> Result<String, RecipeError> {
    let m = r.string(v, "mac")?.to_ascii_lowercase();
    let parts: Vec<&str> = m.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(m)
    } else {
        Err(r.err(
            v.span(),
            format!("mac {m:?} is not an Ethernet address such as \"dc:a6:32:01:36:c2\""),
        ))
    }
}

/// `pattern` with its `{}` or `{:0N}` replaced by `i`; `None` when it holds neither exactly once.
fn expand(pattern: &str, i: u32) -> Option<String> {
    let open = pattern.find('{')?;
    let close = open + pattern[open..].find('}')?;
    if pattern[close + 1..].contains('{') {
        return None;
    }
    let spec = &pattern[open + 1..close];
    let number = match spec {
        "" => i.to_string(),
        s => {
            let width: usize = s.strip_prefix(":0")?.parse().ok().filter(|w| *w <= 9)?;
            format!("{i:0width$}")
        }
    };
    Some(format!(
        "{}{number}{}",
        &pattern[..open],
        &pattern[close + 1..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Inventory {
        parse("cluster.toml", text, &LanDefaults::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> RecipeError {
        match parse("cluster.toml", text, &LanDefaults::default()) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn listed_and_generated_workers_get_names_and_addresses() {
        let inv = parse_ok(
            "[cluster]\nname = \"lab\"\ndomain = \"lab.lan\"\n\
             [defaults.user]\nname = \"pi\"\n\
             [master]\nhostname = \"boss\"\n[master.network]\naddress = \"10.0.0.1/24\"\ndhcp_range = [\"10.0.0.100\", \"10.0.0.199\"]\n\
             [[worker]]\nhostname = \"gpu\"\nmac = \"DC:A6:32:01:36:C2\"\naddress = \"10.0.0.50\"\n\
             [worker.locale]\ntimezone = \"UTC\"\n\
             [workers]\npattern = \"node{:02}\"\ncount = 3\n",
        );
        assert_eq!((inv.name.as_str(), inv.domain.as_str()), ("lab", "lab.lan"));
        assert_eq!(inv.master.hostname, "boss");
        let names: Vec<_> = inv
            .workers
            .iter()
            .map(|w| (w.hostname.as_str(), w.address.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("gpu", "10.0.0.50".to_string()),
                ("node01", "10.0.0.200".to_string()),
                ("node02", "10.0.0.201".to_string()),
                ("node03", "10.0.0.202".to_string()),
            ]
        );
        assert_eq!(inv.workers[0].mac.as_deref(), Some("dc:a6:32:01:36:c2"));
        // Defaults reach every node; a worker's own sections join them.
        assert!(
            inv.workers
                .iter()
                .all(|w| w.sections["user"]["name"].get_ref().as_str() == Some("pi"))
        );
        assert!(inv.workers[0].sections.contains_key("locale"));
        assert!(!inv.workers[1].sections.contains_key("locale"));
        assert_eq!(
            inv.reservations(),
            [
                "dhcp-host=dc:a6:32:01:36:c2,gpu,10.0.0.50",
                "dhcp-host=node01,10.0.0.200",
                "dhcp-host=node02,10.0.0.201",
                "dhcp-host=node03,10.0.0.202",
            ]
        );
        assert_eq!(inv.hosts_lines()[0], "10.0.0.1\tboss.lab.lan boss");
    }

    #[test]
    fn the_role_defaults_give_the_lan_when_the_master_does_not() {
        let inv = parse_ok(
            "[workers]\npattern = \"n{}\"\ncount = 2\nfirst_address = \"192.168.5.101\"\n",
        );
        assert_eq!(inv.lan, ("192.168.5.0".parse().unwrap(), 24));
        assert_eq!(inv.master.address.to_string(), "192.168.5.1");
        assert_eq!(inv.workers[1].hostname, "n2");
        assert_eq!(inv.workers[1].address.to_string(), "192.168.5.102");
    }

    #[test]
    fn conflicts_are_refused_at_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[[worker]]\nhostname = \"a\"\n[[worker]]\nhostname = \"a\"\n",
                4,
                "used twice",
            ),
            ("[[worker]]\nhostname = \"master\"\n", 2, "used twice"),
            (
                "[[worker]]\nhostname = \"a\"\nmac = \"aa:bb:cc:dd:ee:ff\"\n[[worker]]\nhostname = \"b\"\nmac = \"AA:BB:CC:DD:EE:FF\"\n",
                5,
                "two workers",
            ),
            (
                "[[worker]]\nhostname = \"a\"\naddress = \"192.168.5.70\"\n[[worker]]\nhostname = \"b\"\naddress = \"192.168.5.70\"\n",
                6,
                "also a's",
            ),
            (
                "[[worker]]\nhostname = \"a\"\naddress = \"192.168.5.1\"\n",
                3,
                "the master's address",
            ),
            (
                "[[worker]]\nhostname = \"a\"\naddress = \"192.168.5.10\"\n",
                3,
                "inside the DHCP pool",
            ),
            (
                "[[worker]]\nhostname = \"a\"\naddress = \"10.1.1.1\"\n",
                3,
                "outside the LAN",
            ),
            (
                "[[worker]]\nhostname = \"a\"\naddress = \"192.168.5.255\"\n",
                3,
                "outside the LAN",
            ),
            ("[[worker]]\nhostname = \"a_b\"\n", 2, "not a host name"),
            (
                "[[worker]]\nhostname = \"a\"\nmac = \"aa:bb\"\n",
                3,
                "not an Ethernet address",
            ),
            (
                "[[worker]]\nhostname = \"a\"\ncolour = \"red\"\n",
                3,
                "unexpected \"colour\"",
            ),
            (
                "[workers]\npattern = \"node\"\ncount = 2\n",
                2,
                "one {} or {:0N}",
            ),
            (
                "[workers]\npattern = \"n{}\"\ncount = 0\n",
                3,
                "count must be",
            ),
            ("[cluster]\nflavour = 1\n", 2, "unknown key"),
            ("[nodes]\nx = 1\n", 1, "unknown field"),
            (
                "[master.network]\naddress = \"192.168.5.1/24\"\ndhcp_range = [\"192.168.5.2\", \"192.168.5.254\"]\n[workers]\npattern = \"n{}\"\ncount = 2\n",
                5,
                "no address left",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse_err(text);
            assert!(e.message.contains(needle), "{text}\n=> {e}");
            assert_eq!(e.line, *line, "{text}\n=> {e}");
        }
    }

    #[test]
    fn patterns_expand_numbers_and_widths() {
        assert_eq!(expand("node{:02}", 3).as_deref(), Some("node03"));
        assert_eq!(expand("w{}-x", 12).as_deref(), Some("w12-x"));
        assert_eq!(expand("n{:03}", 7).as_deref(), Some("n007"));
        assert_eq!(expand("n{}{}", 1), None);
        assert_eq!(expand("n{:x}", 1), None);
        assert_eq!(expand("plain", 1), None);
    }
}
