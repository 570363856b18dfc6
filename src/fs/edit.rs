//! Text edits the roles need, built on [`FileOps`]: managed blocks, `key=value` settings, and
//! enabling systemd units offline. Every edit is idempotent: running it twice changes nothing the
//! second time.

use super::{FileOps, FsError, Kind, Meta};

/// Why a text edit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The anchor line a block must go before is not in the file.
    #[error("{path}: no line `{anchor}` to insert the pibake block `{name}` before")]
    AnchorNotFound {
        /// The file.
        path: String,
        /// The block's name.
        name: String,
        /// The missing line.
        anchor: String,
    },
    /// Only one of a block's two markers is present: the file was edited by hand.
    #[error(
        "{path}: the pibake block `{name}` has a BEGIN marker without its END (or the reverse); fix the file by hand"
    )]
    BrokenMarkers {
        /// The file.
        path: String,
        /// The block's name.
        name: String,
    },
    /// A unit to enable has no unit file, or nothing to enable it by.
    #[error("cannot enable {unit}: {reason}")]
    Unit {
        /// The unit name.
        unit: String,
        /// Why.
        reason: String,
    },
    /// The underlying file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl crate::error::Classify for EditError {
    fn kind(&self) -> crate::error::Kind {
        match self {
            EditError::Fs(e) => crate::error::Classify::kind(e),
            // The image's file is not shaped the way the edit needs: the base is at fault.
            _ => crate::error::Kind::BadInput,
        }
    }
}

fn markers(name: &str) -> (String, String) {
    (
        format!("# BEGIN pibake {name}"),
        format!("# END pibake {name}"),
    )
}

/// Insert or replace the block `name` holding `body` in `text`.
///
/// An existing block is replaced in place. Otherwise the block goes before the last line equal to
/// `anchor` (ignoring surrounding whitespace) when one is given, or at the end.
pub fn managed_block(
    path: &str,
    text: &str,
    name: &str,
    body: &str,
    anchor: Option<&str>,
) -> Result<String, EditError> {
    let (begin, end) = markers(name);
    let mut block = vec![begin.clone()];
    block.extend(body.lines().map(str::to_string));
    block.push(end.clone());

    let lines: Vec<&str> = text.lines().collect();
    let b = lines.iter().position(|l| l.trim_end() == begin);
    let e = lines.iter().position(|l| l.trim_end() == end);
    let out: Vec<String> = match (b, e) {
        (Some(b), Some(e)) if b < e => {
            let mut v: Vec<String> = lines[..b].iter().map(|s| s.to_string()).collect();
            v.extend(block);
            v.extend(lines[e + 1..].iter().map(|s| s.to_string()));
            v
        }
        (None, None) => {
            let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            match anchor {
                Some(a) => {
                    let at = lines
                        .iter()
                        .rposition(|l| l.trim() == a.trim())
                        .ok_or_else(|| EditError::AnchorNotFound {
                            path: path.to_string(),
                            name: name.to_string(),
                            anchor: a.to_string(),
                        })?;
                    v.splice(at..at, block);
                }
                None => v.extend(block),
            }
            v
        }
        _ => {
            return Err(EditError::BrokenMarkers {
                path: path.to_string(),
                name: name.to_string(),
            });
        }
    };
    let mut s = out.join("\n");
    s.push('\n');
    Ok(s)
}

/// Remove the block `name` from `text`, if present.
pub fn remove_block(path: &str, text: &str, name: &str) -> Result<String, EditError> {
    let (begin, end) = markers(name);
    let lines: Vec<&str> = text.lines().collect();
    let b = lines.iter().position(|l| l.trim_end() == begin);
    let e = lines.iter().position(|l| l.trim_end() == end);
    match (b, e) {
        (None, None) => Ok(text.to_string()),
        (Some(b), Some(e)) if b < e => {
            let mut v: Vec<&str> = lines[..b].to_vec();
            v.extend(&lines[e + 1..]);
            let mut s = v.join("\n");
            if !s.is_empty() {
                s.push('\n');
            }
            Ok(s)
        }
        _ => Err(EditError::BrokenMarkers {
            path: path.to_string(),
            name: name.to_string(),
        }),
    }
}

/// Set `key=value` in a `key=value` file such as `sysctl.conf`.
///
/// Every active line for `key` gets the new value. With none, the first commented-out line for the
/// key (`#key=...`, as distributions ship their defaults) is uncommented and set; failing that, the
/// setting is appended.
pub fn set_key(text: &str, key: &str, value: &str) -> String {
    let setting = format!("{key}={value}");
    let key_of = |line: &str| -> Option<(bool, String)> {
        let t = line.trim_start();
        let (commented, rest) = match t.strip_prefix('#') {
            Some(r) => (true, r.trim_start()),
            None => (false, t),
        };
        let (k, _) = rest.split_once('=')?;
        let k = k.trim();
        (!k.is_empty() && !k.contains(char::is_whitespace)).then(|| (commented, k.to_string()))
    };
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut active = false;
    for line in lines.iter_mut() {
        if let Some((false, k)) = key_of(line)
            && k == key
        {
            *line = setting.clone();
            active = true;
        }
    }
    if !active {
        let commented = lines
            .iter()
            .position(|l| matches!(key_of(l), Some((true, ref k)) if k == key));
        match commented {
            Some(i) => lines[i] = setting,
            None => lines.push(setting),
        }
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// Read `path` as text, apply `edit`, and write it back only if it changed, keeping the file's
/// own mode and owner. A missing file is edited as empty and created with `new_meta`.
/// Returns whether anything was written.
pub fn edit_text(
    fs: &mut dyn FileOps,
    path: &str,
    new_meta: Meta,
    edit: impl FnOnce(&str) -> Result<String, EditError>,
) -> Result<bool, EditError> {
    let (old, meta) = match fs.read(path) {
        Ok(bytes) => {
            let st = fs.stat(path)?;
            // A symlink is written through; its target then takes `new_meta`.
            let st = if st.kind == Kind::Symlink {
                new_meta
            } else {
                Meta {
                    mode: st.mode,
                    uid: st.uid,
                    gid: st.gid,
                    mtime: new_meta.mtime,
                }
            };
            (Some(String::from_utf8_lossy(&bytes).into_owned()), st)
        }
        Err(FsError::NotFound(_)) => (None, new_meta),
        Err(e) => return Err(e.into()),
    };
    let new = edit(old.as_deref().unwrap_or(""))?;
    if old.as_deref() == Some(new.as_str()) {
        return Ok(false);
    }
    fs.write_file(path, new.as_bytes(), meta)?;
    Ok(true)
}

/// The directories systemd reads packaged and local units from, most specific first.
const UNIT_DIRS: [&str; 3] = [
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The symlinks that enable a unit, and whether any had to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enabled {
    /// Every link path, in `[Install]` order.
    pub links: Vec<String>,
    /// True if at least one link was created or corrected.
    pub changed: bool,
}

/// Enable `unit` offline as `systemctl enable` would: one symlink per `WantedBy=`/`RequiredBy=`
/// target and per `Alias=`, pointing at the unit file.
pub fn enable_unit(fs: &mut dyn FileOps, unit: &str, meta: Meta) -> Result<Enabled, EditError> {
    let unit_err = |reason: String| EditError::Unit {
        unit: unit.to_string(),
        reason,
    };
    if unit.contains('/') || unit.contains("@.") {
        return Err(unit_err(
            "only plain unit names (no paths or templates) can be enabled".into(),
        ));
    }
    // On merged-/usr images /lib is a symlink to usr/lib, so the /usr/lib path is the real one.
    let mut found = None;
    for dir in UNIT_DIRS {
        let p = format!("{dir}/{unit}");
        if dir == "/lib/systemd/system" && found.is_some() {
            break;
        }
        match fs.stat(&p) {
            Ok(st) if st.kind == Kind::File => {
                found = Some(p);
                break;
            }
            Ok(_) | Err(FsError::NotFound(_)) | Err(FsError::NotADirectory(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let unit_path =
        found.ok_or_else(|| unit_err(format!("no unit file in {}", UNIT_DIRS.join(", "))))?;
    let text = String::from_utf8_lossy(&fs.read(&unit_path)?).into_owned();
    let mut links = Vec::new();
    let mut in_install = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((key, values)) = line.split_once('=') else {
            continue;
        };
        for value in values.split_whitespace() {
            let link = match key.trim() {
                "WantedBy" => format!("/etc/systemd/system/{value}.wants/{unit}"),
                "RequiredBy" => format!("/etc/systemd/system/{value}.requires/{unit}"),
                "Alias" => format!("/etc/systemd/system/{value}"),
                _ => continue,
            };
            links.push(link);
        }
    }
    if links.is_empty() {
        return Err(unit_err(format!(
            "{unit_path} has no [Install] section with WantedBy=, RequiredBy= or Alias="
        )));
    }
    let mut changed = false;
    for link in &links {
        if let Some((dir, _)) = link.rsplit_once('/')
            && !fs.exists(dir)?
        {
            let dir_meta = Meta {
                mode: 0o755,
                ..meta
            };
            fs.mkdir_p(dir, dir_meta)?;
        }
        let current = match fs.stat(link) {
            Ok(st) if st.kind == Kind::Symlink => Some(fs.read_link(link)?),
            Ok(_) => None,
            Err(FsError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if current.as_deref() != Some(unit_path.as_str()) {
            fs.symlink(link, &unit_path, meta)?;
            changed = true;
        }
    }
    Ok(Enabled { links, changed })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RC_LOCAL: &str = "#!/bin/sh -e\n# Make sure that the script will \"exit 0\" on success.\n_IP=$(hostname -I) || true\nexit 0\n";

    #[test]
    fn managed_block_goes_before_the_anchor_and_is_replaced_not_duplicated() {
        let once = managed_block(
            "/etc/rc.local",
            RC_LOCAL,
            "nat",
            "iptables-restore < /etc/iptables.ipv4.nat",
            Some("exit 0"),
        )
        .unwrap();
        assert!(once.ends_with("# BEGIN pibake nat\niptables-restore < /etc/iptables.ipv4.nat\n# END pibake nat\nexit 0\n"), "{once}");
        let twice = managed_block(
            "/etc/rc.local",
            &once,
            "nat",
            "iptables-restore < /etc/iptables.ipv4.nat",
            Some("exit 0"),
        )
        .unwrap();
        assert_eq!(once, twice);
        let changed =
            managed_block("/etc/rc.local", &once, "nat", "echo hi", Some("exit 0")).unwrap();
        assert_eq!(changed.matches("# BEGIN pibake nat").count(), 1);
        assert!(changed.contains("echo hi") && !changed.contains("iptables-restore"));
        assert_eq!(
            remove_block("/etc/rc.local", &changed, "nat").unwrap(),
            RC_LOCAL
        );
    }

    #[test]
    fn managed_block_errors() {
        assert!(matches!(
            managed_block("/f", "a\n", "x", "b", Some("exit 0")),
            Err(EditError::AnchorNotFound { .. })
        ));
        assert!(matches!(
            managed_block("/f", "# BEGIN pibake x\na\n", "x", "b", None),
            Err(EditError::BrokenMarkers { .. })
        ));
        assert_eq!(
            managed_block("/f", "", "x", "b", None).unwrap(),
            "# BEGIN pibake x\nb\n# END pibake x\n"
        );
    }

    #[test]
    fn set_key_uncomments_or_replaces_or_appends() {
        let conf = "# comment\n#net.ipv4.ip_forward=1\n#net.ipv6.conf.all.forwarding=1\n";
        let once = set_key(conf, "net.ipv4.ip_forward", "1");
        assert_eq!(
            once,
            "# comment\nnet.ipv4.ip_forward=1\n#net.ipv6.conf.all.forwarding=1\n"
        );
        assert_eq!(set_key(&once, "net.ipv4.ip_forward", "1"), once);
        assert_eq!(
            set_key("net.ipv4.ip_forward = 0\n", "net.ipv4.ip_forward", "1"),
            "net.ipv4.ip_forward=1\n"
        );
        assert_eq!(set_key("a=1\n", "b", "2"), "a=1\nb=2\n");
    }
}
