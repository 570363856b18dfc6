//! Planning: the recipe and the image's facts rendered through the role's overlays into an ordered
//! list of file operations. Nothing is written here; `pibake plan` prints the result.

use serde::Serialize;
use serde_json::{Value, json};

use crate::facts::{Facts, NetworkStack};
use crate::fs::{FileOps, FsError};
use crate::overlay::{ActionKind, Entry, Overlay, Partition};
use crate::recipe::Validated;

/// Which way to build the master's networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StackChoice {
    /// classic when the image has everything it needs, otherwise modern.
    Auto,
    /// dhcpcd + dnsmasq package + iptables + rc.local: the well-known manual recipe.
    Classic,
    /// NetworkManager or dhcpcd, dnsmasq-base under a pibake unit, sysctl.d, nftables.
    Modern,
}

/// One planned operation, fully rendered.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    /// Target partition.
    pub partition: Partition,
    /// Target path.
    pub path: String,
    /// What happens.
    #[serde(flatten)]
    pub action: Action,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Content is secret: redacted whenever the plan is shown.
    pub secret: bool,
    /// Why, for the reader of the plan.
    pub why: String,
    /// `overlay#entry` that produced it.
    pub origin: String,
}

/// A rendered action.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Whole file.
    Write {
        /// Content.
        content: String,
    },
    /// Managed block.
    Block {
        /// Block name.
        name: String,
        /// Lines inside the markers.
        body: String,
        /// Insert before this line.
        anchor: Option<String>,
    },
    /// `key=value`.
    SetKey {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// A whole line identified by its start.
    Line {
        /// Prefix that identifies the line.
        key: String,
        /// The full line.
        value: String,
    },
    /// Supplementary group membership.
    GroupMember {
        /// Groups (those missing from the file are skipped).
        groups: Vec<String>,
        /// The member.
        user: String,
    },
    /// Kernel command-line parameter.
    Cmdline {
        /// Parameter name.
        key: String,
        /// Value.
        value: String,
    },
    /// Symlink.
    Symlink {
        /// Target.
        target: String,
    },
    /// Offline `systemctl enable`.
    Enable {
        /// Unit.
        unit: String,
    },
    /// Copy from another path unless the target exists.
    Copy {
        /// Source path.
        source: String,
    },
    /// Directory.
    Mkdir,
    /// Removal.
    Remove,
}

/// The plan for one build.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Role overlay applied.
    pub role: String,
    /// Stack chosen.
    pub stack: String,
    /// Why that stack.
    pub stack_reason: String,
    /// The facts it was derived from.
    pub facts: Facts,
    /// Timestamp given to everything written.
    pub epoch: i64,
    /// Operations, in order.
    pub ops: Vec<Op>,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--stack classic` on an image that lacks what it needs.
    #[error(
        "the classic stack needs {missing} in the image, which {release} does not have; use --stack modern (same result with what the image has)"
    )]
    ClassicUnavailable {
        /// Missing packages/files.
        missing: String,
        /// The release, for the message.
        release: String,
    },
    /// The chosen stack needs something the image lacks.
    #[error("the {stack} stack needs {missing} in the image, which {release} does not have")]
    StackUnavailable {
        /// Stack name.
        stack: String,
        /// Missing facts.
        missing: String,
        /// The release.
        release: String,
    },
    /// Neither NetworkManager nor dhcpcd was found, so there is nothing to give the LAN address to.
    #[error(
        "cannot tell how {release} configures its network: {reason}; pibake supports dhcpcd and NetworkManager images"
    )]
    UnknownNetworkStack {
        /// The release.
        release: String,
        /// The evidence looked at.
        reason: String,
    },
    /// A template or condition failed to render.
    #[error("{origin}: {message}")]
    Render {
        /// `overlay#entry`.
        origin: String,
        /// minijinja's message.
        message: String,
    },
    /// An entry lacks a field its action needs, or has an unusable mode/owner.
    #[error("{origin}: {message}")]
    Entry {
        /// `overlay#entry`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// Reading the image failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl PlanError {
    /// True when the recipe, overlay or image is at fault.
    pub fn is_bad_input(&self) -> bool {
        match self {
            PlanError::Fs(e) => e.is_bad_input(),
            _ => true,
        }
    }
}

impl crate::error::Classify for PlanError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }
}

/// The release's codename for messages, or a neutral phrase when the image has none.
fn release_name(facts: &Facts) -> String {
    if facts.os.codename.is_empty() {
        "this image".to_string()
    } else {
        facts.os.codename.clone()
    }
}

fn fact(facts: &Facts, name: &str) -> bool {
    serde_json::to_value(facts)
        .ok()
        .and_then(|v| v.get(name).and_then(Value::as_bool))
        .unwrap_or(false)
}

/// Pick the stack and say why.
fn choose_stack(
    overlay: &Overlay,
    facts: &Facts,
    choice: StackChoice,
) -> Result<(String, String), PlanError> {
    let classic_missing: Vec<String> = overlay
        .stacks
        .get("classic")
        .map(|s| {
            s.requires
                .iter()
                .filter(|r| !fact(facts, r))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let release = release_name(facts);
    match choice {
        StackChoice::Classic if !classic_missing.is_empty() => Err(PlanError::ClassicUnavailable {
            missing: classic_missing.join(", "),
            release,
        }),
        StackChoice::Classic => Ok(("classic".into(), "requested with --stack classic".into())),
        StackChoice::Modern => Ok(("modern".into(), "requested with --stack modern".into())),
        StackChoice::Auto if classic_missing.is_empty() => Ok((
            "classic".into(),
            "auto: the image has everything the classic recipe needs".into(),
        )),
        StackChoice::Auto => Ok((
            "modern".into(),
            format!(
                "auto: {release} lacks {} for the classic recipe",
                classic_missing.join(", ")
            ),
        )),
    }
}

/// A deterministic salt, so the same recipe and epoch give the same hash (and the same image).
fn salt(v: &Validated, epoch: i64) -> [u8; 12] {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(b"pibake password salt\0")
        .chain_update(v.recipe.node.hostname.get_ref().as_bytes())
        .chain_update([0])
        .chain_update(v.recipe.user.name.get_ref().as_bytes())
        .chain_update(epoch.to_le_bytes())
        .finalize();
    let mut s = [0u8; 12];
    s.copy_from_slice(&d[..12]);
    s
}

/// The password hash for `/etc/shadow` and `userconf.txt`: given, hashed from the recipe's
/// password (sha512-crypt), or `*` (no password login) when neither is set.
fn password_hash(v: &Validated, epoch: i64) -> Result<String, PlanError> {
    use sha_crypt::{PasswordHasher, ShaCrypt};
    if let Some(h) = &v.recipe.user.password_hash {
        return Ok(h.get_ref().clone());
    }
    match &v.recipe.user.password {
        Some(p) => ShaCrypt::SHA512
            .hash_password_with_salt(p.get_ref().as_bytes(), &salt(v, epoch))
            .map(|h| h.to_string())
            .map_err(|e| PlanError::Entry {
                origin: "recipe".into(),
                message: format!("cannot hash the password: {e}"),
            }),
        None => Ok("*".into()),
    }
}

/// uid and gid for the recipe's user: theirs if the image has the user, else the first free
/// id from 1000.
fn user_ids(root: &mut dyn FileOps, name: &str) -> Result<(u32, u32), PlanError> {
    let passwd = match root.read("/etc/passwd") {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(FsError::NotFound(_)) => String::new(),
        Err(e) => return Err(e.into()),
    };
    let mut used = std::collections::BTreeSet::new();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 {
            if f[0] == name {
                if let (Ok(u), Ok(g)) = (f[2].parse(), f[3].parse()) {
                    return Ok((u, g));
                }
            }
            if let Ok(u) = f[2].parse::<u32>() {
                used.insert(u);
            }
        }
    }
    let uid = (1000..60000).find(|u| !used.contains(u)).unwrap_or(1000);
    Ok((uid, uid))
}

/// Everything templates see.
fn context(
    v: &Validated,
    facts: &Facts,
    stack: &str,
    epoch: i64,
    ids: (u32, u32),
    hash: &str,
) -> Value {
    let r = &v.recipe;
    let keys: Vec<&String> = r
        .user
        .ssh_authorized_keys
        .iter()
        .map(|k| k.get_ref())
        .collect();
    let password_auth = r.ssh.password_authentication.unwrap_or(keys.is_empty());
    json!({
        "stack": stack,
        "facts": facts,
        "epoch": epoch,
        "node": { "hostname": r.node.hostname.get_ref(), "role": r.node.role.get_ref() },
        "user": {
            "name": r.user.name.get_ref(),
            "uid": ids.0,
            "gid": ids.1,
            "home": format!("/home/{}", r.user.name.get_ref()),
            "password_hash": hash,
            "has_password": hash != "*",
            "ssh_authorized_keys": keys,
        },
        "ssh": { "enabled": r.ssh.enabled, "password_authentication": password_auth },
        "wifi": r.wifi.as_ref().map(|w| json!({
            "ssid": w.ssid.get_ref(), "psk": w.psk.get_ref(), "country": w.country.get_ref(),
        })),
        "lan": v.lan,
        "locale": {
            "timezone": r.locale.timezone.as_ref().map(|t| t.get_ref()),
            "keymap": r.locale.keymap.as_ref().map(|k| k.get_ref()),
        },
        "is_nm": facts.network_stack == NetworkStack::NetworkManager,
        "is_dhcpcd": facts.network_stack == NetworkStack::Dhcpcd,
    })
}

/// A name-based UUID (version 5 layout over SHA-256), so NetworkManager connection ids are stable.
fn stable_uuid(name: &str) -> String {
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

fn environment(overlay: &Overlay) -> Result<minijinja::Environment<'static>, PlanError> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_filter("uuid", |s: String| stable_uuid(&s));
    for (name, source) in &overlay.templates {
        env.add_template_owned(name.clone(), source.clone())
            .map_err(|e| PlanError::Render {
                origin: format!("{}/{name}", overlay.name),
                message: e.to_string(),
            })?;
    }
    Ok(env)
}

/// Make the plan for `v` on an image with `facts`, reading the root filesystem where the plan
/// depends on its contents (user ids).
pub fn make(
    v: &Validated,
    facts: &Facts,
    overlays: &[Overlay],
    choice: StackChoice,
    epoch: i64,
    root: &mut dyn FileOps,
) -> Result<Plan, PlanError> {
    let role = overlays.first().map(|o| o.name.clone()).unwrap_or_default();
    let release = release_name(facts);
    let (stack, stack_reason) = match overlays.first() {
        Some(o) if !o.stacks.is_empty() => {
            if facts.network_stack == NetworkStack::Unknown {
                return Err(PlanError::UnknownNetworkStack {
                    release,
                    reason: facts.network_stack_reason.clone(),
                });
            }
            let (stack, why) = choose_stack(o, facts, choice)?;
            let missing: Vec<String> = o
                .stacks
                .get(&stack)
                .map(|s| {
                    s.requires
                        .iter()
                        .filter(|r| !fact(facts, r))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if !missing.is_empty() {
                return Err(PlanError::StackUnavailable {
                    stack,
                    missing: missing.join(", "),
                    release,
                });
            }
            (stack, why)
        }
        _ => ("none".into(), "the overlay defines no stacks".into()),
    };
    let ids = user_ids(root, v.recipe.user.name.get_ref())?;
    let hash = password_hash(v, epoch)?;
    let ctx = context(v, facts, &stack, epoch, ids, &hash);
    let mut ops = Vec::new();
    for overlay in overlays {
        let env = environment(overlay)?;
        for (i, entry) in overlay.entries.iter().enumerate() {
            let origin = format!("{}#{} ({})", overlay.name, i + 1, entry.path);
            if let Some(op) = render(&env, overlay, entry, &ctx, &origin)? {
                ops.push(op);
            }
        }
    }
    Ok(Plan {
        role,
        stack,
        stack_reason,
        facts: facts.clone(),
        epoch,
        ops,
    })
}

fn render(
    env: &minijinja::Environment<'_>,
    overlay: &Overlay,
    e: &Entry,
    ctx: &Value,
    origin: &str,
) -> Result<Option<Op>, PlanError> {
    let rerr = |err: minijinja::Error| PlanError::Render {
        origin: origin.to_string(),
        message: format!("{err:#}").replace('\n', " "),
    };
    if let Some(cond) = &e.when {
        let expr = env.compile_expression(cond).map_err(rerr)?;
        if !expr.eval(ctx).map_err(rerr)?.is_true() {
            return Ok(None);
        }
    }
    let s = |t: &str| env.render_str(t, ctx).map_err(rerr);
    let need = |field: &Option<String>, name: &str| -> Result<String, PlanError> {
        match field {
            Some(t) => s(t),
            None => Err(PlanError::Entry {
                origin: origin.to_string(),
                message: format!("action {:?} needs `{name}`", e.action),
            }),
        }
    };
    let body = || -> Result<String, PlanError> {
        match (&e.template, &e.content) {
            (Some(t), _) => env
                .get_template(t)
                .and_then(|t| t.render(ctx))
                .map_err(rerr),
            (None, Some(c)) => s(c),
            (None, None) => Err(PlanError::Entry {
                origin: origin.to_string(),
                message: format!("action {:?} needs `template` or `content`", e.action),
            }),
        }
    };
    let action = match e.action {
        ActionKind::Write => Action::Write { content: body()? },
        ActionKind::Block => Action::Block {
            name: match &e.name {
                Some(n) => s(n)?,
                None => overlay.name.clone(),
            },
            body: body()?.trim_end_matches('\n').to_string(),
            anchor: e.anchor.as_deref().map(s).transpose()?,
        },
        ActionKind::SetKey => Action::SetKey {
            key: need(&e.key, "key")?,
            value: need(&e.value, "value")?,
        },
        ActionKind::Line => Action::Line {
            key: need(&e.key, "key")?,
            value: need(&e.value, "value")?,
        },
        ActionKind::GroupMember => Action::GroupMember {
            groups: need(&e.key, "key")?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            user: need(&e.value, "value")?,
        },
        ActionKind::Cmdline => Action::Cmdline {
            key: need(&e.key, "key")?,
            value: need(&e.value, "value")?,
        },
        ActionKind::Symlink => Action::Symlink {
            target: need(&e.target, "target")?,
        },
        ActionKind::Enable => Action::Enable {
            unit: need(&e.unit, "unit")?,
        },
        ActionKind::Copy => Action::Copy {
            source: need(&e.source, "source")?,
        },
        ActionKind::Mkdir => Action::Mkdir,
        ActionKind::Remove => Action::Remove,
    };
    let dir_like = matches!(action, Action::Mkdir);
    let mode = match &e.mode {
        Some(m) => u32::from_str_radix(s(m)?.trim_start_matches("0o"), 8).map_err(|_| {
            PlanError::Entry {
                origin: origin.to_string(),
                message: format!("mode {m:?} is not octal"),
            }
        })?,
        None if dir_like => 0o755,
        None => 0o644,
    };
    let (uid, gid) = match &e.owner {
        Some(o) => {
            let o = s(o)?;
            o.split_once(':')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                .ok_or_else(|| PlanError::Entry {
                    origin: origin.to_string(),
                    message: format!("owner {o:?} must be numeric uid:gid"),
                })?
        }
        None => (0, 0),
    };
    Ok(Some(Op {
        partition: e.partition,
        path: s(&e.path)?,
        action,
        mode,
        uid,
        gid,
        secret: e.secret,
        why: e.why.as_deref().map(s).transpose()?.unwrap_or_default(),
        origin: origin.to_string(),
    }))
}

impl Plan {
    /// The plan as JSON with every secret replaced by `<redacted>`.
    pub fn redacted_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(ops) = v.get_mut("ops").and_then(Value::as_array_mut) {
            for (op, orig) in ops.iter_mut().zip(&self.ops) {
                if orig.secret {
                    for k in ["content", "body", "value"] {
                        if op.get(k).is_some() {
                            op[k] = "<redacted>".into();
                        }
                    }
                }
            }
        }
        v
    }

    /// The human-readable plan.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let f = &self.facts;
        let _ = writeln!(
            o,
            "image      {} ({})",
            if f.os.pretty_name.is_empty() {
                "unknown OS"
            } else {
                &f.os.pretty_name
            },
            f.os.codename
        );
        let _ = writeln!(
            o,
            "network    {:?} ({})",
            f.network_stack, f.network_stack_reason
        );
        let _ = writeln!(o, "role       {}", self.role);
        let _ = writeln!(o, "stack      {} ({})", self.stack, self.stack_reason);
        let _ = writeln!(o, "operations {}", self.ops.len());
        for op in &self.ops {
            let part = match op.partition {
                Partition::Boot => "boot",
                Partition::Root => "root",
            };
            let what = match &op.action {
                Action::Write { content } => format!("write {} bytes", content.len()),
                Action::Block { name, anchor, .. } => match anchor {
                    Some(a) => format!("block '{name}' before '{a}'"),
                    None => format!("block '{name}'"),
                },
                Action::SetKey { key, value } if !op.secret => format!("set {key}={value}"),
                Action::SetKey { key, .. } => format!("set {key}=<redacted>"),
                Action::Line { key, .. } => format!("line '{key}…'"),
                Action::GroupMember { groups, user } => {
                    format!("add {user} to {}", groups.join(","))
                }
                Action::Cmdline { key, value } => format!("kernel parameter {key}={value}"),
                Action::Symlink { target } => format!("symlink -> {target}"),
                Action::Enable { unit } => format!("enable {unit}"),
                Action::Copy { source } => format!("copy from {source} if missing"),
                Action::Mkdir => "mkdir".into(),
                Action::Remove => "remove".into(),
            };
            let secret = if op.secret { " [secret]" } else { "" };
            let _ = writeln!(
                o,
                "  {part}:{:<56} {what}  {:04o} {}:{}{secret}",
                op.path, op.mode, op.uid, op.gid
            );
            if !op.why.is_empty() {
                let _ = writeln!(o, "      {}", op.why);
            }
        }
        o
    }
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
}
