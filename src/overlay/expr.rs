//! The template and expression language overlays are written in: minijinja, strict about
//! unknown names, with the few filters and tests a role needs that Jinja lacks (addresses,
//! password hashing, account ids, stable UUIDs). They are general: no role is named here.

use std::net::Ipv4Addr;
use std::sync::Arc;

use minijinja::{Error, ErrorKind, State, Value};

use super::types::{netmask, parse_interface};
use crate::facts::Account;

/// A configured template environment.
pub type Environment = minijinja::Environment<'static>;

/// An environment with `templates` loaded, resolving `account` against `accounts` (the image's
/// `/etc/passwd`).
pub fn environment<'a>(
    templates: impl IntoIterator<Item = (&'a String, &'a String)>,
    accounts: &[Account],
) -> Result<Environment, (String, Error)> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_filter("uuid", |s: String| stable_uuid(&s));
    // A string in double quotes with escapes, as error messages show values.
    env.add_filter("quote", |s: String| format!("{s:?}"));
    env.add_filter("ipv4_address", |s: String| {
        interface(&s).map(|(a, _)| a.to_string())
    });
    env.add_filter("ipv4_prefix", |s: String| interface(&s).map(|(_, p)| p));
    env.add_filter("ipv4_netmask", |s: String| {
        interface(&s).map(|(_, p)| Ipv4Addr::from(netmask(p)).to_string())
    });
    env.add_filter("ipv4_network", |s: String| {
        interface(&s).map(|(a, p)| Ipv4Addr::from(u32::from(a) & netmask(p)).to_string())
    });
    env.add_test("host_in", |ip: String, cidr: String| host_in(&ip, &cidr));
    env.add_test("in_range", |ip: String, range: Vec<String>| {
        in_range(&ip, &range)
    });
    env.add_filter("sha512_crypt", sha512_crypt);
    let accounts = Arc::new(accounts.to_vec());
    env.add_filter("account", move |name: String| account(&accounts, &name));
    for (name, source) in templates {
        env.add_template_owned(name.clone(), source.clone())
            .map_err(|e| (name.clone(), e))?;
    }
    Ok(env)
}

fn interface(s: &str) -> Result<(Ipv4Addr, u8), Error> {
    parse_interface(s).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("{s:?} is not an IPv4 address with a prefix length"),
        )
    })
}

/// `ip` is a host address (not the network or broadcast address) of `cidr`'s subnet.
fn host_in(ip: &str, cidr: &str) -> bool {
    let (Ok(ip), Some((net_addr, prefix))) = (ip.parse::<Ipv4Addr>(), parse_interface(cidr)) else {
        return false;
    };
    let mask = netmask(prefix);
    let network = u32::from(net_addr) & mask;
    let v = u32::from(ip);
    v & mask == network && v != network && v != network | !mask
}

/// `ip` (an address, or an address with a prefix length) lies within `[first, last]`.
fn in_range(ip: &str, range: &[String]) -> bool {
    let ip = ip.split('/').next().unwrap_or(ip);
    let parse = |s: &str| s.parse::<Ipv4Addr>().ok().map(u32::from);
    match (parse(ip), range.first(), range.get(1)) {
        (Some(v), Some(a), Some(b)) => match (parse(a), parse(b)) {
            (Some(a), Some(b)) => (a..=b).contains(&v),
            _ => false,
        },
        _ => false,
    }
}

/// sha512-crypt of `password` with a salt derived from `seed` and the build's `epoch`, so the
/// same recipe and epoch give the same hash (and the same image).
fn sha512_crypt(state: &State, password: String, seed: Vec<String>) -> Result<String, Error> {
    use sha_crypt::{PasswordHasher, ShaCrypt};
    use sha2::{Digest, Sha256};
    let epoch = state
        .lookup("epoch")
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| Error::new(ErrorKind::UndefinedError, "sha512_crypt needs `epoch`"))?;
    let mut d = Sha256::new().chain_update(b"pibake password salt\0");
    for (i, part) in seed.iter().enumerate() {
        if i > 0 {
            d.update([0]);
        }
        d.update(part.as_bytes());
    }
    let d = d.chain_update(epoch.to_le_bytes()).finalize();
    let mut salt = [0u8; 12];
    salt.copy_from_slice(&d[..12]);
    ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("cannot hash: {e}")))
}

/// `{uid, gid}` of account `name`: the image's own when it has one, else the first free id
/// from 1000 for both.
fn account(accounts: &[Account], name: &str) -> Value {
    let existing = accounts.iter().find_map(|a| {
        (a.name == name)
            .then_some(a.gid)
            .flatten()
            .map(|g| (a.uid, g))
    });
    let (uid, gid) = match existing {
        Some(ids) => ids,
        None => {
            let uid = (1000..60000)
                .find(|u| !accounts.iter().any(|a| a.uid == *u))
                .unwrap_or(1000);
            (uid, uid)
        }
    };
    Value::from_serialize(serde_json::json!({ "uid": uid, "gid": gid }))
}

/// A name-based UUID (version 5 layout over SHA-256), so NetworkManager connection ids are stable.
pub fn stable_uuid(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("pibake:{name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = stable_uuid("master/lan");
        assert_eq!(a, stable_uuid("master/lan"));
        assert_ne!(a, stable_uuid("master/wifi"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "5");
    }

    #[test]
    fn address_tests() {
        assert!(host_in("192.168.5.2", "192.168.5.1/24"));
        assert!(!host_in("192.168.5.0", "192.168.5.1/24"));
        assert!(!host_in("192.168.5.255", "192.168.5.1/24"));
        assert!(!host_in("192.168.6.2", "192.168.5.1/24"));
        let r = ["192.168.5.2".to_string(), "192.168.5.64".to_string()];
        assert!(in_range("192.168.5.64/24", &r));
        assert!(!in_range("192.168.5.1", &r));
    }

    #[test]
    fn accounts_keep_existing_ids_and_pick_free_ones() {
        let have = [
            Account {
                name: "root".into(),
                uid: 0,
                gid: Some(0),
            },
            Account {
                name: "pi".into(),
                uid: 1000,
                gid: Some(1000),
            },
        ];
        let pi = account(&have, "pi");
        assert_eq!(pi.get_attr("uid").unwrap(), Value::from(1000));
        let new = account(&have, "ada");
        assert_eq!(new.get_attr("uid").unwrap(), Value::from(1001));
        assert_eq!(new.get_attr("gid").unwrap(), Value::from(1001));
    }
}
