//! Applying a plan through the file operations of the boot and root filesystems. Every operation
//! is idempotent: applying the same plan to its own result changes nothing.

use crate::fs::edit::{self, EditError};
use crate::fs::{FileOps, FsError, Kind, Meta};
use crate::overlay::Partition;
use crate::plan::{Action, Op, Plan};

/// An operation that failed, and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{partition}:{path} ({origin}): {source}")]
pub struct ApplyError {
    /// `boot` or `root`.
    pub partition: &'static str,
    /// The path.
    pub path: String,
    /// `overlay#entry`.
    pub origin: String,
    /// What went wrong.
    pub source: Box<EditError>,
}

impl ApplyError {
    /// True when the image or recipe is at fault.
    pub fn is_bad_input(&self) -> bool {
        match self.source.as_ref() {
            EditError::Fs(e) => e.is_bad_input(),
            _ => true,
        }
    }
}

impl crate::error::Classify for ApplyError {
    fn kind(&self) -> crate::error::Kind {
        if self.is_bad_input() {
            crate::error::Kind::BadInput
        } else {
            crate::error::Kind::Environment
        }
    }

    /// The filesystem's advice (e.g. run e2fsck on a damaged root) reaches the user through the
    /// operation that met the damage.
    fn hint(&self) -> Option<String> {
        match self.source.as_ref() {
            EditError::Fs(e) => e.hint(),
            _ => None,
        }
    }
}

/// What applying did, per operation: true where something was written.
pub type Report = Vec<bool>;

/// Apply every operation of `plan` in order.
pub fn apply(
    plan: &Plan,
    root: &mut dyn FileOps,
    boot: &mut dyn FileOps,
) -> Result<Report, ApplyError> {
    let mut report = Vec::with_capacity(plan.ops.len());
    for op in &plan.ops {
        let (name, fs): (&'static str, &mut dyn FileOps) = match op.partition {
            Partition::Root => ("root", &mut *root),
            Partition::Boot => ("boot", &mut *boot),
        };
        let changed = apply_one(op, plan.epoch, fs).map_err(|source| ApplyError {
            partition: name,
            path: op.path.clone(),
            origin: op.origin.clone(),
            source: Box::new(source),
        })?;
        report.push(changed);
    }
    Ok(report)
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn ensure_parent(fs: &mut dyn FileOps, path: &str, epoch: i64) -> Result<(), FsError> {
    let dir = parent(path);
    if dir != "/" && !fs.exists(dir)? {
        fs.mkdir_p(dir, Meta::root(0o755, epoch))?;
    }
    Ok(())
}

fn apply_one(op: &Op, epoch: i64, fs: &mut dyn FileOps) -> Result<bool, EditError> {
    let meta = Meta {
        mode: op.mode,
        uid: op.uid,
        gid: op.gid,
        mtime: epoch,
    };
    let path = op.path.as_str();
    match &op.action {
        Action::Write { content } => {
            ensure_parent(fs, path, epoch)?;
            let same = match fs.read(path) {
                Ok(old) => {
                    let st = fs.stat(path)?;
                    old == content.as_bytes()
                        && (st.kind == Kind::Symlink
                            || !fs.has_ownership()
                            || (st.mode, st.uid, st.gid) == (meta.mode, meta.uid, meta.gid))
                }
                Err(FsError::NotFound(_)) => false,
                Err(e) => return Err(e.into()),
            };
            if same {
                return Ok(false);
            }
            fs.write_file(path, content.as_bytes(), meta)?;
            Ok(true)
        }
        Action::Block { name, body, anchor } => {
            if anchor.is_none() {
                ensure_parent(fs, path, epoch)?;
            }
            edit::edit_text(fs, path, meta, |t| {
                edit::managed_block(path, t, name, body, anchor.as_deref())
            })
        }
        Action::SetKey { key, value } => {
            ensure_parent(fs, path, epoch)?;
            edit::edit_text(fs, path, meta, |t| Ok(edit::set_key(t, key, value)))
        }
        Action::Line { key, value } => {
            ensure_parent(fs, path, epoch)?;
            edit::edit_text(fs, path, meta, |t| Ok(set_line(t, key, value)))
        }
        Action::GroupMember { groups, user } => {
            if !fs.exists(path)? {
                return Ok(false);
            }
            edit::edit_text(fs, path, meta, |t| Ok(add_member(t, groups, user)))
        }
        Action::Cmdline { key, value } => {
            edit::edit_text(fs, path, meta, |t| Ok(set_cmdline(t, key, value)))
        }
        Action::Replace { from, to } => {
            if !fs.exists(path)? {
                return Ok(false);
            }
            edit::edit_text(fs, path, meta, |t| Ok(t.replace(from.as_str(), to)))
        }
        Action::Symlink { target } => {
            ensure_parent(fs, path, epoch)?;
            match fs.stat(path) {
                Ok(st) if st.kind == Kind::Symlink && fs.read_link(path)? == *target => {
                    return Ok(false);
                }
                Ok(st) if st.kind == Kind::Dir => {
                    return Err(FsError::IsADirectory(path.to_string()).into());
                }
                Ok(_) => fs.remove(path)?,
                Err(FsError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            fs.symlink(path, target, meta)?;
            Ok(true)
        }
        Action::Enable { unit } => Ok(edit::enable_unit(
            fs,
            unit,
            Meta {
                mode: 0o777,
                ..meta
            },
        )?
        .changed),
        Action::Copy { source } => {
            if fs.exists(path)? || !fs.exists(source)? {
                return Ok(false);
            }
            let data = fs.read(source)?;
            let st = fs.stat(source)?;
            fs.write_file(
                path,
                &data,
                Meta {
                    mode: st.mode,
                    ..meta
                },
            )?;
            Ok(true)
        }
        Action::Mkdir => match fs.stat(path) {
            Ok(st) if st.kind == Kind::Dir => {
                if !fs.has_ownership()
                    || (st.mode, st.uid, st.gid) == (meta.mode, meta.uid, meta.gid)
                {
                    Ok(false)
                } else {
                    fs.set_meta(path, meta)?;
                    Ok(true)
                }
            }
            Ok(_) => Err(FsError::NotADirectory(path.to_string()).into()),
            Err(FsError::NotFound(_)) => {
                fs.mkdir_p(path, meta)?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        },
        Action::Remove => match fs.stat(path) {
            Ok(_) => {
                fs.remove(path)?;
                Ok(true)
            }
            Err(FsError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        },
    }
}

/// Replace the first line starting with `key` (and any later ones) by `value`, or append it.
pub fn set_line(text: &str, key: &str, value: &str) -> String {
    let mut seen = false;
    let mut out: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with(key) {
            if !seen {
                out.push(value);
                seen = true;
            }
        } else {
            out.push(line);
        }
    }
    if !seen {
        out.push(value);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Add `user` to the member list (last field) of each of `groups` present in a group-format file.
pub fn add_member(text: &str, groups: &[String], user: &str) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && groups.iter().any(|g| g == fields[0]) {
            let last = fields.len() - 1;
            let members: Vec<&str> = fields[last].split(',').filter(|m| !m.is_empty()).collect();
            if !members.contains(&user) {
                let mut f = fields.clone();
                let joined = members
                    .iter()
                    .copied()
                    .chain([user])
                    .collect::<Vec<_>>()
                    .join(",");
                f[last] = &joined;
                out.push(f.join(":"));
                continue;
            }
        }
        out.push(line.to_string());
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Set `key=value` on a one-line kernel command line, replacing an existing `key=`.
pub fn set_cmdline(text: &str, key: &str, value: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    let prefix = format!("{key}=");
    let mut params: Vec<String> = line
        .split_whitespace()
        .filter(|p| !p.starts_with(&prefix) && *p != key)
        .map(str::to_string)
        .collect();
    params.push(format!("{key}={value}"));
    let mut s = params.join(" ");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_group_and_cmdline_edits_are_idempotent() {
        let hosts = "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n";
        let once = set_line(hosts, "127.0.1.1", "127.0.1.1\tmaster");
        assert_eq!(once, "127.0.0.1\tlocalhost\n127.0.1.1\tmaster\n");
        assert_eq!(set_line(&once, "127.0.1.1", "127.0.1.1\tmaster"), once);
        let group = "sudo:x:27:\nvideo:x:44:alice\nother:x:5:\n";
        let g = add_member(
            group,
            &["sudo".into(), "video".into(), "missing".into()],
            "pi",
        );
        assert_eq!(g, "sudo:x:27:pi\nvideo:x:44:alice,pi\nother:x:5:\n");
        assert_eq!(add_member(&g, &["sudo".into(), "video".into()], "pi"), g);
        let c = set_cmdline(
            "console=tty1 root=PARTUUID=1-02 rootwait\n",
            "cfg80211.ieee80211_regdom",
            "GB",
        );
        assert_eq!(
            c,
            "console=tty1 root=PARTUUID=1-02 rootwait cfg80211.ieee80211_regdom=GB\n"
        );
        assert_eq!(set_cmdline(&c, "cfg80211.ieee80211_regdom", "GB"), c);
        assert_eq!(
            set_cmdline(&c, "cfg80211.ieee80211_regdom", "FR")
                .matches("regdom")
                .count(),
            1
        );
    }
}
