//! Trust without prompts: the cluster's client key pair and every node's SSH host key, kept in
//! the secrets directory (made on the first build, reused after), and the lines each node gets
//! from them: the workers authorise the cluster key, every node knows the host keys it will
//! meet, so the master's first `ssh node03` never asks.

use std::collections::BTreeMap;

use super::inventory::{Inventory, Node};
use super::secrets::{Secrets, SecretsError};
use crate::sshkey::KeyPair;

/// The keys of one cluster, by host name.
pub struct Trust {
    /// The key pair the master's user logs into the workers with.
    pub client: KeyPair,
    /// Every node's SSH host key.
    pub hosts: BTreeMap<String, KeyPair>,
    /// Names of the keys this run generated (the rest were reused).
    pub created: Vec<String>,
}

/// The name of the client key in the secrets directory.
const CLIENT: &str = "cluster-client";

impl Trust {
    /// Load every key the inventory needs from `secrets`, generating the missing ones.
    pub fn load(secrets: &Secrets, inv: &Inventory) -> Result<Trust, SecretsError> {
        let mut created = Vec::new();
        let user = inv
            .master
            .sections
            .get("user")
            .and_then(|u| u.get("name"))
            .and_then(|v| v.get_ref().as_str())
            .unwrap_or("pi")
            .to_string();
        let comment = format!("{user}@{}.{}", inv.master.hostname, inv.domain);
        let (client, new) = secrets.key(CLIENT, &comment)?;
        if new {
            created.push(CLIENT.to_string());
        }
        let mut hosts = BTreeMap::new();
        for n in inv.nodes() {
            let name = format!("host-{}", n.hostname);
            let (key, new) = secrets.key(&name, &format!("root@{}", n.hostname))?;
            if new {
                created.push(name);
            }
            hosts.insert(n.hostname.clone(), key);
        }
        Ok(Trust {
            client,
            hosts,
            created,
        })
    }

    /// The `ssh_known_hosts` line of `node`: every name it answers to, then its host key.
    pub fn known_hosts_line(&self, inv: &Inventory, node: &Node) -> Option<String> {
        let key = self.hosts.get(&node.hostname)?;
        Some(format!(
            "{name},{name}.{domain},{addr} ssh-ed25519 {blob}",
            name = node.hostname,
            domain = inv.domain,
            addr = node.address,
            blob = key.public_blob_base64()
        ))
    }
}
