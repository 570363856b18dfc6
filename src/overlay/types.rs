//! The value types an overlay can give its recipe inputs. Each checks one value and says, in a
//! sentence that names the field, what is wrong with it. They are building blocks for any role:
//! which field has which type, and every rule across fields, is the overlay's business.

use std::net::Ipv4Addr;

use serde::Deserialize;
use toml::Value;

/// The type of one recipe input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Type {
    /// Any one-line string.
    String,
    /// `true` or `false`.
    Bool,
    /// A whole number.
    Integer,
    /// A host name: one DNS label, 1-63 letters, digits and hyphens.
    Hostname,
    /// A login name that is not root.
    Username,
    /// A plain password: non-empty, one line.
    Password,
    /// A crypt(3) hash (`$6$`, `$5$` or `$y$`).
    CryptHash,
    /// One SSH public key line.
    SshPublicKey,
    /// An unencrypted Ed25519 private key in OpenSSH's format (several lines).
    SshPrivateKey,
    /// A Wi-Fi network name.
    WifiSsid,
    /// A WPA passphrase (8-63 printable characters) or 64 hex digits.
    WifiPsk,
    /// A two-letter ISO 3166 country code in capitals.
    CountryCode,
    /// A network interface name.
    Interface,
    /// An IPv4 address.
    Ipv4,
    /// A host's IPv4 address with its prefix length (`192.168.5.1/24`).
    Ipv4Interface,
    /// `[first, last]` IPv4 addresses, first not after last.
    Ipv4Range,
    /// A duration as dnsmasq writes lease times (`24h`, `30m`, `3600`, `infinite`).
    Duration,
    /// A tz database name (`Europe/London`).
    Timezone,
    /// A keyboard layout name (`gb`).
    Keymap,
    /// An MBR disk identifier: 8 hex digits, `0x` allowed (`0x1a2b3c4d`), not all zero.
    DiskId,
}

/// The MBR disk identifier `s` as `PARTUUID=` names it (8 lowercase hex digits), or `None`
/// when it is not 8 hex digits (after an optional `0x`) or is zero, which means "no id".
pub fn parse_disk_id(s: &str) -> Option<String> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let ok = hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (ok && hex.bytes().any(|b| b != b'0')).then(|| hex.to_ascii_lowercase())
}

/// What a value is, for "must be a ..." messages.
fn shape(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

fn string<'a>(field: &str, v: &'a Value) -> Result<&'a str, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("{field} must be a string, not {}", shape(other))),
    }
}

/// An RFC 1123 host-name label: letters, digits and inner hyphens, 1 to 63 characters.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `a.b.c.d/len` with a usable host address: the address and prefix, or why not.
pub fn parse_interface(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr = a.parse::<Ipv4Addr>().ok()?;
    let prefix = p.parse::<u8>().ok().filter(|p| (1..=30).contains(p))?;
    Some((addr, prefix))
}

/// The netmask of a prefix length (1-32).
pub fn netmask(prefix: u8) -> u32 {
    u32::MAX << (32 - u32::from(prefix.clamp(1, 32)))
}

impl Type {
    /// Check one value (a list's elements are checked one by one by the caller).
    pub fn check(self, field: &str, v: &Value) -> Result<(), String> {
        match self {
            Type::String => {
                let s = string(field, v)?;
                if s.contains('\n') {
                    return Err(format!("{field} must be on one line"));
                }
            }
            Type::Bool => {
                if !v.is_bool() {
                    return Err(format!("{field} must be true or false, not {}", shape(v)));
                }
            }
            Type::Integer => {
                if !v.is_integer() {
                    return Err(format!("{field} must be a whole number, not {}", shape(v)));
                }
            }
            Type::Hostname => {
                let s = string(field, v)?;
                if !is_label(s) {
                    return Err(format!(
                        "{field} {s:?} is not a valid host name: use 1-63 letters, digits and hyphens, not starting or ending with a hyphen"
                    ));
                }
            }
            Type::Username => {
                let s = string(field, v)?;
                let valid = !s.is_empty()
                    && s.len() <= 32
                    && s.bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    });
                if !valid || s == "root" {
                    return Err(format!(
                        "user name {s:?} is not usable: lowercase letters, digits, '_' and '-', starting with a letter, and not root"
                    ));
                }
            }
            Type::Password => {
                let s = string(field, v)?;
                if s.is_empty() || s.contains('\n') {
                    return Err(format!("{field} must be non-empty and on one line"));
                }
            }
            Type::CryptHash => {
                let s = string(field, v)?;
                if !(s.starts_with("$6$") || s.starts_with("$5$") || s.starts_with("$y$"))
                    || s.contains(':')
                    || s.contains('\n')
                {
                    return Err(format!(
                        "{field} must be a crypt(3) hash such as \"$6$salt$...\" (from `openssl passwd -6` or `mkpasswd`)"
                    ));
                }
            }
            Type::SshPublicKey => {
                let k = string(field, v)?;
                let mut parts = k.split_whitespace();
                let kind = parts.next().unwrap_or("");
                let body = parts.next().unwrap_or("");
                let known = kind.starts_with("ssh-")
                    || kind.starts_with("ecdsa-")
                    || kind.starts_with("sk-");
                if !known || body.len() < 16 || k.contains('\n') {
                    return Err(
                        "not an SSH public key: expected one line like \"ssh-ed25519 AAAA... comment\""
                            .into(),
                    );
                }
            }
            Type::SshPrivateKey => {
                let k = string(field, v)?;
                if let Err(e) = crate::sshkey::KeyPair::parse_private(k) {
                    return Err(format!(
                        "{field} is not an unencrypted Ed25519 OpenSSH private key: {e}"
                    ));
                }
            }
            Type::WifiSsid => {
                let s = string(field, v)?;
                if s.is_empty() || s.len() > 32 || s.contains('\n') || s.contains('"') {
                    return Err(format!(
                        "Wi-Fi {field} must be 1 to 32 bytes, on one line, without double quotes"
                    ));
                }
            }
            Type::WifiPsk => {
                let psk = string(field, v)?;
                let hex64 = psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit());
                if !(8..=63).contains(&psk.chars().count()) && !hex64 {
                    return Err(format!(
                        "Wi-Fi {field} must be 8 to 63 characters (it has {})",
                        psk.chars().count()
                    ));
                }
                if !psk.chars().all(|ch| (' '..='~').contains(&ch)) && !hex64 {
                    return Err(format!("Wi-Fi {field} must be printable ASCII"));
                }
            }
            Type::CountryCode => {
                let cc = string(field, v)?;
                if cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(format!(
                        "{field} {cc:?} must be a two-letter ISO 3166 code in capitals, e.g. \"GB\""
                    ));
                }
            }
            Type::Interface => {
                let s = string(field, v)?;
                let ok = !s.is_empty()
                    && s.len() < 16
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(format!("{s:?} is not a valid interface name"));
                }
            }
            Type::Ipv4 => {
                let s = string(field, v)?;
                if s.parse::<Ipv4Addr>().is_err() {
                    return Err(format!("{field} {s:?} is not an IPv4 address"));
                }
            }
            Type::Ipv4Interface => {
                let s = string(field, v)?;
                let (addr, prefix) = parse_interface(s).ok_or_else(|| {
                    format!(
                        "{field} {s:?} is not an IPv4 address with prefix length 1-30, e.g. \"192.168.5.1/24\""
                    )
                })?;
                let mask = netmask(prefix);
                let network = u32::from(addr) & mask;
                if u32::from(addr) == network || u32::from(addr) == network | !mask {
                    return Err(format!(
                        "{field} {addr} is the network or broadcast address of its /{prefix}"
                    ));
                }
            }
            Type::Ipv4Range => {
                let shape_err = || {
                    format!(
                        "{field} must be [first, last], e.g. [\"192.168.5.2\", \"192.168.5.64\"]"
                    )
                };
                let Value::Array(ends) = v else {
                    return Err(shape_err());
                };
                if ends.len() != 2 {
                    return Err(shape_err());
                }
                let mut ips = [Ipv4Addr::UNSPECIFIED; 2];
                for (i, e) in ends.iter().enumerate() {
                    let s = string(field, e)?;
                    ips[i] = s
                        .parse()
                        .map_err(|_| format!("{field} entry {s:?} is not an IPv4 address"))?;
                }
                if u32::from(ips[0]) > u32::from(ips[1]) {
                    return Err(format!(
                        "{field} starts at {} after it ends at {}",
                        ips[0], ips[1]
                    ));
                }
            }
            Type::Duration => {
                let s = string(field, v)?;
                let ok = s == "infinite"
                    || s.strip_suffix(['s', 'm', 'h', 'd', 'w'])
                        .unwrap_or(s)
                        .parse::<u32>()
                        .is_ok_and(|v| v > 0);
                if !ok {
                    return Err(format!(
                        "{field} {s:?} must be a duration such as \"24h\", \"30m\", \"3600\" or \"infinite\""
                    ));
                }
            }
            Type::Timezone => {
                let s = string(field, v)?;
                if s.is_empty()
                    || s.starts_with('/')
                    || s.contains("..")
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b))
                {
                    return Err(format!(
                        "{field} {s:?} is not a tz database name such as \"Europe/London\""
                    ));
                }
            }
            Type::Keymap => {
                let s = string(field, v)?;
                if s.is_empty()
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
                {
                    return Err(format!(
                        "{field} {s:?} is not a keyboard layout name such as \"gb\""
                    ));
                }
            }
            Type::DiskId => {
                let s = string(field, v)?;
                if parse_disk_id(s).is_none() {
                    return Err(format!(
                        "{field} {s:?} is not an MBR disk identifier: use 8 hex digits, not all zero, e.g. \"0x1a2b3c4d\" (what `fdisk -l` calls the disk identifier)"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    #[test]
    fn disk_ids_are_read_as_partuuid_names_them() {
        assert_eq!(parse_disk_id("0x1A2B3C4D").as_deref(), Some("1a2b3c4d"));
        assert_eq!(parse_disk_id("0badcafe").as_deref(), Some("0badcafe"));
        for bad in [
            "",
            "0x",
            "1a2b3c4",
            "1a2b3c4d5",
            "0x00000000",
            "zz2b3c4d",
            "-1a2b3c4",
        ] {
            assert_eq!(parse_disk_id(bad), None, "{bad}");
            assert!(Type::DiskId.check("disk_id", &s(bad)).is_err(), "{bad}");
        }
        assert!(Type::DiskId.check("disk_id", &s("0xdeadbeef")).is_ok());
    }

    #[test]
    fn each_type_refuses_what_it_should() {
        assert!(Type::Hostname.check("hostname", &s("node-1")).is_ok());
        let e = Type::Hostname
            .check("hostname", &s("-bad_name"))
            .unwrap_err();
        assert!(
            e.starts_with("hostname \"-bad_name\" is not a valid host name"),
            "{e}"
        );
        assert!(Type::Username.check("name", &s("root")).is_err());
        assert!(
            Type::Ipv4Interface
                .check("address", &s("192.168.5.1/24"))
                .is_ok()
        );
        for bad in [
            "192.168.5.0/24",
            "192.168.5.255/24",
            "192.168.5.300/24",
            "10.0.0.1/31",
        ] {
            assert!(
                Type::Ipv4Interface.check("address", &s(bad)).is_err(),
                "{bad}"
            );
        }
        let range = |a: &str, b: &str| Value::Array(vec![s(a), s(b)]);
        assert!(
            Type::Ipv4Range
                .check("r", &range("10.0.0.2", "10.0.0.9"))
                .is_ok()
        );
        let e = Type::Ipv4Range
            .check("r", &range("10.0.0.9", "10.0.0.2"))
            .unwrap_err();
        assert!(
            e.contains("starts at 10.0.0.9 after it ends at 10.0.0.2"),
            "{e}"
        );
        assert!(Type::Duration.check("lease", &s("24h")).is_ok());
        assert!(Type::Duration.check("lease", &s("0h")).is_err());
        assert!(
            Type::WifiPsk
                .check("psk", &s("short"))
                .unwrap_err()
                .contains("8 to 63")
        );
        assert!(Type::WifiPsk.check("psk", &s(&"a".repeat(64))).is_ok());
        assert!(Type::CountryCode.check("country", &s("gb")).is_err());
        assert!(Type::Bool.check("enabled", &s("yes")).is_err());
        assert!(
            Type::Timezone
                .check("timezone", &s("../etc/passwd"))
                .is_err()
        );
    }
}
