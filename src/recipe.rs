//! The recipe: what one node should become, read from TOML and validated with errors that point at
//! the offending line.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A recipe that failed to parse or validate, with where in the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct RecipeError {
    /// The recipe file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl crate::error::Classify for RecipeError {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

/// The recipe could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read recipe {path}: {source}")]
pub struct RecipeReadError {
    /// The path given.
    pub path: PathBuf,
    /// What the OS said.
    pub source: std::io::Error,
}

impl crate::error::Classify for RecipeReadError {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}

/// `[image]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// OS-list name, URL or local path of the base image.
    pub base: Option<String>,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Host name (a single DNS label).
    #[serde(default = "default_hostname")]
    pub hostname: Spanned<String>,
    /// Role overlay to apply (`master`).
    #[serde(default = "default_role")]
    pub role: Spanned<String>,
}

/// `[user]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    #[serde(default = "default_user")]
    pub name: Spanned<String>,
    /// Plain password, hashed by pibake (never stored or shown).
    pub password: Option<Spanned<String>>,
    /// Ready-made crypt(3) hash (`$6$...` or `$y$...`).
    pub password_hash: Option<Spanned<String>>,
    /// Public keys for `~/.ssh/authorized_keys`.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<Spanned<String>>,
}

/// `[ssh]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Enable sshd.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Allow password logins (default: only when no keys are given).
    pub password_authentication: Option<bool>,
}

/// `[wifi]`: the master's uplink.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    /// Network name.
    pub ssid: Spanned<String>,
    /// WPA passphrase, 8 to 63 characters.
    pub psk: Spanned<String>,
    /// Regulatory country, two letters (`GB`).
    pub country: Spanned<String>,
}

/// `[network]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The cluster-facing interface.
    #[serde(default = "default_lan")]
    pub lan_interface: Spanned<String>,
    /// The master's LAN address with prefix length.
    #[serde(default = "default_address")]
    pub address: Spanned<String>,
    /// First and last address handed to workers.
    #[serde(default = "default_range")]
    pub dhcp_range: Spanned<Vec<String>>,
    /// DHCP lease time (`24h`, `30m`, `3600`, `infinite`).
    #[serde(default = "default_lease")]
    pub lease: Spanned<String>,
    /// The interface workers' traffic is masqueraded out of.
    #[serde(default = "default_uplink")]
    pub uplink_interface: Spanned<String>,
}

/// `[locale]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Locale {
    /// tz database name (`Europe/London`).
    pub timezone: Option<Spanned<String>>,
    /// Console/X keyboard layout (`gb`).
    pub keymap: Option<Spanned<String>>,
}

/// `[build]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Timestamp for everything written, seconds since 1970 (else `SOURCE_DATE_EPOCH`).
    pub epoch: Option<i64>,
}

/// A parsed recipe. Every section is optional; defaults reproduce the classic cluster recipe.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// `[image]`
    #[serde(default)]
    pub image: ImageSection,
    /// `[node]`
    #[serde(default = "default_node")]
    pub node: Node,
    /// `[user]`
    #[serde(default = "default_user_section")]
    pub user: User,
    /// `[ssh]`
    #[serde(default = "default_ssh")]
    pub ssh: Ssh,
    /// `[wifi]`
    pub wifi: Option<Wifi>,
    /// `[network]`
    #[serde(default = "default_network")]
    pub network: Network,
    /// `[locale]`
    #[serde(default)]
    pub locale: Locale,
    /// `[build]`
    #[serde(default)]
    pub build: Build,
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn yes() -> bool {
    true
}
fn default_hostname() -> Spanned<String> {
    spanned("master".into())
}
fn default_role() -> Spanned<String> {
    spanned("master".into())
}
fn default_user() -> Spanned<String> {
    spanned("pi".into())
}
fn default_lan() -> Spanned<String> {
    spanned("eth0".into())
}
fn default_address() -> Spanned<String> {
    spanned("192.168.5.1/24".into())
}
fn default_range() -> Spanned<Vec<String>> {
    spanned(vec!["192.168.5.2".into(), "192.168.5.64".into()])
}
fn default_lease() -> Spanned<String> {
    spanned("24h".into())
}
fn default_uplink() -> Spanned<String> {
    spanned("wlan0".into())
}
fn default_node() -> Node {
    Node {
        hostname: default_hostname(),
        role: default_role(),
    }
}
fn default_user_section() -> User {
    User {
        name: default_user(),
        password: None,
        password_hash: None,
        ssh_authorized_keys: Vec::new(),
    }
}
fn default_ssh() -> Ssh {
    Ssh {
        enabled: true,
        password_authentication: None,
    }
}
fn default_network() -> Network {
    Network {
        lan_interface: default_lan(),
        address: default_address(),
        dhcp_range: default_range(),
        lease: default_lease(),
        uplink_interface: default_uplink(),
    }
}

/// The LAN as validated: everything templates need, precomputed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Lan {
    /// Interface name.
    pub interface: String,
    /// The master's address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// `address/prefix`.
    pub cidr: String,
    /// Dotted netmask.
    pub netmask: Ipv4Addr,
    /// Network address.
    pub network: Ipv4Addr,
    /// First DHCP address.
    pub range_start: Ipv4Addr,
    /// Last DHCP address.
    pub range_end: Ipv4Addr,
    /// Lease time as dnsmasq spells it.
    pub lease: String,
    /// Uplink interface name.
    pub uplink: String,
}

/// A recipe that passed validation, with derived values.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The recipe as written.
    pub recipe: Recipe,
    /// The LAN.
    pub lan: Lan,
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> RecipeError {
        // A default value has an empty span at 0: point at the top of the file.
        let (line, column) = line_col(self.text, span.start);
        RecipeError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Read and validate the recipe at `path`.
pub fn load(path: &Path) -> Result<Validated, anyhow::Error> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeReadError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(&path.display().to_string(), &text)?)
}

/// Parse and validate recipe `text`; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Validated, RecipeError> {
    let c = Checker { file, text };
    let recipe: Recipe = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        c.err(span, e.message().trim().replace('\n', "; "))
    })?;
    let lan = validate(&c, &recipe)?;
    Ok(Validated { recipe, lan })
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_interface(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn validate(c: &Checker<'_>, r: &Recipe) -> Result<Lan, RecipeError> {
    let host = &r.node.hostname;
    if !is_label(host.get_ref()) {
        return Err(c.err(host.span(), format!(
            "hostname {:?} is not a valid host name: use 1-63 letters, digits and hyphens, not starting or ending with a hyphen",
            host.get_ref()
        )));
    }
    let role = &r.node.role;
    if role.get_ref() != "master" {
        return Err(c.err(
            role.span(),
            format!(
                "unknown role {:?}: the built-in role is \"master\"",
                role.get_ref()
            ),
        ));
    }
    let name = &r.user.name;
    let valid_user = {
        let s = name.get_ref();
        !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if !valid_user || name.get_ref() == "root" {
        return Err(c.err(name.span(), format!(
            "user name {:?} is not usable: lowercase letters, digits, '_' and '-', starting with a letter, and not root",
            name.get_ref()
        )));
    }
    if let (Some(p), Some(_)) = (&r.user.password, &r.user.password_hash) {
        return Err(c.err(p.span(), "give either password or password_hash, not both"));
    }
    if let Some(h) = &r.user.password_hash {
        let s = h.get_ref();
        if !(s.starts_with("$6$") || s.starts_with("$5$") || s.starts_with("$y$"))
            || s.contains(':')
        {
            return Err(c.err(h.span(), "password_hash must be a crypt(3) hash such as \"$6$salt$...\" (from `openssl passwd -6` or `mkpasswd`)"));
        }
    }
    if let Some(p) = &r.user.password {
        if p.get_ref().is_empty() || p.get_ref().contains('\n') {
            return Err(c.err(p.span(), "password must be non-empty and on one line"));
        }
    }
    for key in &r.user.ssh_authorized_keys {
        let k = key.get_ref();
        let mut parts = k.split_whitespace();
        let kind = parts.next().unwrap_or("");
        let body = parts.next().unwrap_or("");
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        if !known || body.len() < 16 || k.contains('\n') {
            return Err(c.err(
                key.span(),
                "not an SSH public key: expected one line like \"ssh-ed25519 AAAA... comment\"",
            ));
        }
    }
    if let Some(w) = &r.wifi {
        let psk = w.psk.get_ref();
        let hex64 = psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit());
        if !(8..=63).contains(&psk.chars().count()) && !hex64 {
            return Err(c.err(
                w.psk.span(),
                format!(
                    "Wi-Fi psk must be 8 to 63 characters (it has {})",
                    psk.chars().count()
                ),
            ));
        }
        if !psk.chars().all(|ch| (' '..='~').contains(&ch)) && !hex64 {
            return Err(c.err(w.psk.span(), "Wi-Fi psk must be printable ASCII"));
        }
        let ssid = w.ssid.get_ref();
        if ssid.is_empty() || ssid.len() > 32 || ssid.contains('\n') || ssid.contains('"') {
            return Err(c.err(
                w.ssid.span(),
                "Wi-Fi ssid must be 1 to 32 bytes, on one line, without double quotes",
            ));
        }
        let cc = w.country.get_ref();
        if cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(c.err(
                w.country.span(),
                format!(
                    "country {cc:?} must be a two-letter ISO 3166 code in capitals, e.g. \"GB\""
                ),
            ));
        }
    }

    let n = &r.network;
    for iface in [&n.lan_interface, &n.uplink_interface] {
        if !is_interface(iface.get_ref()) {
            return Err(c.err(
                iface.span(),
                format!("{:?} is not a valid interface name", iface.get_ref()),
            ));
        }
    }
    if n.lan_interface.get_ref() == n.uplink_interface.get_ref() {
        // Point at whichever of the two the user wrote (a default has an empty span).
        let span = if n.uplink_interface.span().is_empty() {
            n.lan_interface.span()
        } else {
            n.uplink_interface.span()
        };
        return Err(c.err(span, format!(
            "uplink_interface and lan_interface are both {:?}: the master forwards between two different interfaces",
            n.uplink_interface.get_ref()
        )));
    }
    let (addr, prefix) = n
        .address
        .get_ref()
        .split_once('/')
        .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
        .filter(|(_, p)| (1..=30).contains(p))
        .ok_or_else(|| {
            c.err(n.address.span(), format!(
            "address {:?} is not an IPv4 address with prefix length 1-30, e.g. \"192.168.5.1/24\"",
            n.address.get_ref()
        ))
        })?;
    let mask = u32::MAX << (32 - u32::from(prefix));
    let network = u32::from(addr) & mask;
    let broadcast = network | !mask;
    if u32::from(addr) == network || u32::from(addr) == broadcast {
        return Err(c.err(
            n.address.span(),
            format!("address {addr} is the network or broadcast address of its /{prefix}"),
        ));
    }
    let range = n.dhcp_range.get_ref();
    if range.len() != 2 {
        return Err(c.err(
            n.dhcp_range.span(),
            "dhcp_range must be [first, last], e.g. [\"192.168.5.2\", \"192.168.5.64\"]",
        ));
    }
    let mut ends = [Ipv4Addr::UNSPECIFIED; 2];
    for (i, s) in range.iter().enumerate() {
        let ip: Ipv4Addr = s.parse().map_err(|_| {
            c.err(
                n.dhcp_range.span(),
                format!("dhcp_range entry {s:?} is not an IPv4 address"),
            )
        })?;
        let v = u32::from(ip);
        if v & mask != network || v == network || v == broadcast {
            return Err(c.err(
                n.dhcp_range.span(),
                format!(
                    "dhcp_range {ip} is outside the LAN {}/{prefix} (from address = {:?})",
                    Ipv4Addr::from(network),
                    n.address.get_ref()
                ),
            ));
        }
        ends[i] = ip;
    }
    if u32::from(ends[0]) > u32::from(ends[1]) {
        return Err(c.err(
            n.dhcp_range.span(),
            format!(
                "dhcp_range starts at {} after it ends at {}",
                ends[0], ends[1]
            ),
        ));
    }
    if (u32::from(ends[0])..=u32::from(ends[1])).contains(&u32::from(addr)) {
        return Err(c.err(n.dhcp_range.span(), format!(
            "dhcp_range {}-{} contains the master's own address {addr}: start the range above it",
            ends[0], ends[1]
        )));
    }
    let lease = n.lease.get_ref();
    let lease_ok = lease == "infinite"
        || lease
            .strip_suffix(['s', 'm', 'h', 'd', 'w'])
            .unwrap_or(lease)
            .parse::<u32>()
            .is_ok_and(|v| v > 0);
    if !lease_ok {
        return Err(c.err(n.lease.span(), format!("lease {lease:?} must be a duration such as \"24h\", \"30m\", \"3600\" or \"infinite\"")));
    }
    if let Some(tz) = &r.locale.timezone {
        let s = tz.get_ref();
        if s.is_empty()
            || s.starts_with('/')
            || s.contains("..")
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b))
        {
            return Err(c.err(
                tz.span(),
                format!("timezone {s:?} is not a tz database name such as \"Europe/London\""),
            ));
        }
    }
    if let Some(km) = &r.locale.keymap {
        let s = km.get_ref();
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(c.err(
                km.span(),
                format!("keymap {s:?} is not a keyboard layout name such as \"gb\""),
            ));
        }
    }
    Ok(Lan {
        interface: n.lan_interface.get_ref().clone(),
        address: addr,
        prefix,
        cidr: format!("{addr}/{prefix}"),
        netmask: Ipv4Addr::from(mask),
        network: Ipv4Addr::from(network),
        range_start: ends[0],
        range_end: ends[1],
        lease: lease.clone(),
        uplink: n.uplink_interface.get_ref().clone(),
    })
}

/// The recipe with secrets replaced, for plans, logs and the manifest.
pub fn redacted(r: &Recipe) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    if let Some(user) = v.get_mut("user") {
        for k in ["password", "password_hash"] {
            if user.get(k).is_some_and(|x| !x.is_null()) {
                user[k] = "<redacted>".into();
            }
        }
    }
    if let Some(wifi) = v.get_mut("wifi").filter(|w| !w.is_null()) {
        wifi["psk"] = "<redacted>".into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> RecipeError {
        parse("r.toml", text).expect_err("should be refused")
    }

    #[test]
    fn defaults_are_the_classic_cluster() {
        let v = parse("r.toml", "").unwrap();
        assert_eq!(v.lan.cidr, "192.168.5.1/24");
        assert_eq!(v.lan.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            (v.lan.range_start, v.lan.range_end),
            (
                Ipv4Addr::new(192, 168, 5, 2),
                Ipv4Addr::new(192, 168, 5, 64)
            )
        );
        assert_eq!(
            (
                v.lan.interface.as_str(),
                v.lan.uplink.as_str(),
                v.lan.lease.as_str()
            ),
            ("eth0", "wlan0", "24h")
        );
        assert_eq!(v.recipe.node.hostname.get_ref(), "master");
    }

    #[test]
    fn errors_point_at_the_line() {
        let e = err(
            "[network]\naddress = \"192.168.5.1/24\"\ndhcp_range = [\"192.168.6.2\", \"192.168.6.9\"]\n",
        );
        assert_eq!((e.line, e.column), (3, 14), "{e}");
        assert!(e.message.contains("outside the LAN 192.168.5.0/24"), "{e}");
        let e = err("[network]\ndhcp_range = [\"192.168.5.1\", \"192.168.5.9\"]\n");
        assert!(
            e.message.contains("contains the master's own address"),
            "{e}"
        );
        let e = err("[node]\nhostname = \"-bad_name\"\n");
        assert_eq!(e.line, 2);
        let e = err("[wifi]\nssid = \"x\"\npsk = \"short\"\ncountry = \"GB\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("8 to 63"));
        let e = err("[wifi]\nssid = \"x\"\npsk = \"longenough\"\ncountry = \"gb\"\n");
        assert_eq!(e.line, 4);
        let e = err("[network]\nuplink_interface = \"eth0\"\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("different interfaces"));
        let e = err("[network]\naddress = \"192.168.5.300/24\"\n");
        assert_eq!(e.line, 2);
        let e = err("[network]\nadress = \"x\"\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = err("[node]\nhostname = \n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.to_string().starts_with("r.toml:2:"), "{e}");
    }

    #[test]
    fn redaction_hides_secrets() {
        let v = parse("r.toml", "[user]\npassword = \"hunter22\"\n[wifi]\nssid = \"home\"\npsk = \"supersecret\"\ncountry = \"GB\"\n").unwrap();
        let text = redacted(&v.recipe).to_string();
        assert!(
            !text.contains("hunter22") && !text.contains("supersecret"),
            "{text}"
        );
        assert!(text.contains("<redacted>") && text.contains("home"));
    }
}
