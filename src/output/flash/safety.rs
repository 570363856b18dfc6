//! Whether a block device may be overwritten: not mounted or otherwise in use, not the disk the
//! running system lives on, and removable (an SD card or USB stick, not an internal disk).
//!
//! On Linux the answers come from sysfs and procfs: `/sys/dev/block/MAJ:MIN` leads to the disk
//! and its partitions, `removable` and `device/type` tell a card reader from a fixed disk,
//! `holders/` shows device-mapper, LVM or RAID users, `/proc/self/mountinfo` and `/proc/swaps`
//! what is mounted or swapped on, and the device of `/` (followed through `slaves/`) is the
//! system disk. Every path is taken from a [`Host`], so tests describe a machine in a temporary
//! directory instead of touching the real one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A `major:minor` device number.
pub type DevNum = (u32, u32);

/// Split a Linux `dev_t` into major and minor numbers (glibc's encoding).
pub fn dev_num(rdev: u64) -> DevNum {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Where the facts about the machine are read from.
#[derive(Debug, Clone)]
pub struct Host {
    /// sysfs mount point, `/sys`.
    pub sys: PathBuf,
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
    /// Device number of the filesystem holding `/`, when it has one.
    pub root_dev: Option<DevNum>,
}

impl Host {
    /// The machine pibake runs on.
    pub fn current() -> Self {
        #[cfg(unix)]
        let root_dev = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/").ok().map(|m| dev_num(m.dev()))
        };
        #[cfg(not(unix))]
        let root_dev = None;
        Host {
            sys: PathBuf::from("/sys"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            swaps: PathBuf::from("/proc/swaps"),
            root_dev,
        }
    }
}

/// Why a device is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The device is a partition; cards are written whole.
    #[error("{name} is a partition; name the whole disk ({disk}) to write an image")]
    Partition {
        /// The partition's kernel name.
        name: String,
        /// The disk it belongs to.
        disk: String,
    },
    /// Something on the disk is mounted.
    #[error("{disk} is in use: {what} is mounted on {mountpoint}; unmount it first")]
    Mounted {
        /// The disk's kernel name.
        disk: String,
        /// The mounted partition.
        what: String,
        /// Where.
        mountpoint: String,
    },
    /// Swap, device-mapper, LVM or RAID uses the disk.
    #[error("{disk} is in use by {user}; stop using it first")]
    InUse {
        /// The disk's kernel name.
        disk: String,
        /// What holds it.
        user: String,
    },
    /// The running system lives on the disk.
    #[error("{disk} holds the running system (/); refusing to overwrite it")]
    SystemDisk {
        /// The disk's kernel name.
        disk: String,
    },
    /// The disk does not say it is removable.
    #[error(
        "{disk} is not a removable disk ({description}); pass --force if it really is the card to overwrite"
    )]
    NotRemovable {
        /// The disk's kernel name.
        disk: String,
        /// Model and size, for recognising it.
        description: String,
    },
    /// sysfs knows nothing of the device.
    #[error(
        "cannot tell what device {dev} is (no /sys/dev/block/{dev}); pass --force to write it anyway"
    )]
    Unknown {
        /// `major:minor`.
        dev: String,
    },
    /// This OS offers no way here to check the device.
    #[error(
        "pibake cannot check on this operating system whether {path} is mounted, removable or the system disk; pass --force to write it anyway"
    )]
    Unsupported {
        /// The device path.
        path: String,
    },
}

impl crate::error::Classify for Refusal {
    fn kind(&self) -> crate::error::Kind {
        // The user named a device pibake will not write; they can name another.
        crate::error::Kind::BadInput
    }
}

/// What was found about a disk that passed (or was forced past) the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name (`sdb`, `mmcblk0`).
    pub name: String,
    /// Vendor, model and size, as far as sysfs tells.
    pub description: String,
    /// Size in bytes, from sysfs.
    pub bytes: Option<u64>,
    /// The refusals `--force` overrode, if any.
    pub overridden: Vec<Refusal>,
}

/// Check the block device `dev` on `host`. With `force`, every refusal but writing a partition
/// is recorded in [`DiskInfo::overridden`] instead of returned.
pub fn check_block_device(dev: DevNum, host: &Host, force: bool) -> Result<DiskInfo, Refusal> {
    let dev_s = format!("{}:{}", dev.0, dev.1);
    let node = match std::fs::canonicalize(host.sys.join("dev/block").join(&dev_s)) {
        Ok(p) => p,
        Err(_) => {
            let r = Refusal::Unknown { dev: dev_s };
            return if force {
                Ok(DiskInfo {
                    name: "unknown".into(),
                    description: "unknown device".into(),
                    bytes: None,
                    overridden: vec![r],
                })
            } else {
                Err(r)
            };
        }
    };
    let name = file_name(&node);
    if node.join("partition").exists() {
        let disk = node.parent().map(file_name).unwrap_or_default();
        return Err(Refusal::Partition { name, disk });
    }
    let disk = node;
    let info_bytes = read_trim(&disk.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|sectors| sectors * 512);
    let description = describe(&disk, &name, info_bytes);

    let mut problems = Vec::new();
    if system_disks(host).contains(&disk) {
        problems.push(Refusal::SystemDisk { disk: name.clone() });
    }
    // The disk and its partitions: names and device numbers.
    let mut members: Vec<(String, Option<String>, PathBuf)> =
        vec![(name.clone(), read_trim(&disk.join("dev")), disk.clone())];
    if let Ok(entries) = std::fs::read_dir(&disk) {
        let mut parts: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("partition").exists())
            .collect();
        parts.sort();
        for p in parts {
            members.push((file_name(&p), read_trim(&p.join("dev")), p));
        }
    }

    // Mounted, by device number or by source path.
    if let Some(text) = read(&host.mountinfo) {
        'lines: for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let devno = fields.get(2).copied().unwrap_or_default();
            let mountpoint = unescape(fields.get(4).copied().unwrap_or_default());
            let source = fields.get(sep + 2).copied().unwrap_or_default();
            for (member, member_dev, _) in &members {
                if member_dev.as_deref() == Some(devno) || source == format!("/dev/{member}") {
                    problems.push(Refusal::Mounted {
                        disk: name.clone(),
                        what: format!("/dev/{member}"),
                        mountpoint,
                    });
                    break 'lines;
                }
            }
        }
    }
    if let Some(text) = read(&host.swaps) {
        for line in text.lines().skip(1) {
            let source = line.split_whitespace().next().unwrap_or_default();
            if let Some((member, _, _)) = members
                .iter()
                .find(|(m, _, _)| source == format!("/dev/{m}"))
            {
                problems.push(Refusal::InUse {
                    disk: name.clone(),
                    user: format!("swap on /dev/{member}"),
                });
                break;
            }
        }
    }
    for (member, _, path) in &members {
        if let Some(holder) = first_entry(&path.join("holders")) {
            problems.push(Refusal::InUse {
                disk: name.clone(),
                user: format!("{holder} (holding /dev/{member})"),
            });
            break;
        }
    }
    if !removable(&disk) {
        problems.push(Refusal::NotRemovable {
            disk: name.clone(),
            description: description.clone(),
        });
    }
    if !force {
        if let Some(first) = problems.into_iter().next() {
            return Err(first);
        }
        problems = Vec::new();
    }
    Ok(DiskInfo {
        name,
        description,
        bytes: info_bytes,
        overridden: problems,
    })
}

/// A card reader slot or USB stick: the kernel's removable flag, or an SD card (built-in
/// readers report SD cards as not removable).
fn removable(disk: &Path) -> bool {
    read_trim(&disk.join("removable")).as_deref() == Some("1")
        || read_trim(&disk.join("device/type")).as_deref() == Some("SD")
}

fn describe(disk: &Path, name: &str, bytes: Option<u64>) -> String {
    let mut parts = Vec::new();
    for f in ["device/vendor", "device/model", "device/name"] {
        if let Some(v) = read_trim(&disk.join(f)).filter(|v| !v.is_empty()) {
            parts.push(v);
        }
    }
    if let Some(b) = bytes {
        parts.push(format!("{:.1} GB", b as f64 / 1e9));
    }
    if parts.is_empty() {
        name.to_string()
    } else {
        parts.join(" ")
    }
}

/// The sysfs directories of the whole disks the root filesystem lives on.
fn system_disks(host: &Host) -> BTreeSet<PathBuf> {
    let mut start = Vec::new();
    if let Some((maj, min)) = host.root_dev
        && let Ok(p) = std::fs::canonicalize(host.sys.join(format!("dev/block/{maj}:{min}")))
    {
        start.push(p);
    }
    // Roots on overlay or btrfs have no block device number: use the source of `/` instead.
    if start.is_empty()
        && let Some(text) = read(&host.mountinfo)
    {
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.get(4) != Some(&"/") {
                continue;
            }
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            if let Some(src) = fields.get(sep + 2).and_then(|s| s.strip_prefix("/dev/"))
                && let Ok(p) = std::fs::canonicalize(host.sys.join("class/block").join(src))
            {
                start.push(p);
            }
        }
    }
    let mut disks = BTreeSet::new();
    let mut seen = BTreeSet::new();
    while let Some(node) = start.pop() {
        if !seen.insert(node.clone()) {
            continue;
        }
        let mut lower = Vec::new();
        if let Ok(entries) = std::fs::read_dir(node.join("slaves")) {
            for e in entries.filter_map(|e| e.ok()) {
                if let Ok(p) = std::fs::canonicalize(e.path()) {
                    lower.push(p);
                }
            }
        }
        if !lower.is_empty() {
            start.extend(lower);
        } else if node.join("partition").exists() {
            if let Some(parent) = node.parent() {
                disks.insert(parent.to_path_buf());
            }
        } else {
            disks.insert(node);
        }
    }
    disks
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_trim(p: &Path) -> Option<String> {
    read(p).map(|s| s.trim().to_string())
}

fn first_entry(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_split_like_glibc() {
        assert_eq!(dev_num(0x0811), (8, 17));
        assert_eq!(dev_num(0xb300), (179, 0));
        assert_eq!(dev_num((259u64 << 8) | 3), (259, 3));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/media/my\\040card"), "/media/my card");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
