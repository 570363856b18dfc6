//! Facts about an image, read from its files: which release, which network stack, which of the
//! packages and files the roles branch on are present. Later stages decide from these, never from
//! guesses, and say which fact decided.

use serde::Serialize;

use crate::fs::{FileOps, FsError, Kind};

/// `/etc/os-release`, the fields pibake uses.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OsRelease {
    /// e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub pretty_name: String,
    /// e.g. `bookworm`.
    pub codename: String,
    /// e.g. `12`.
    pub version_id: String,
    /// e.g. `debian`.
    pub id: String,
}

impl OsRelease {
    /// Parse the `KEY=value` lines of an os-release file (values optionally quoted).
    pub fn parse(text: &str) -> Self {
        let mut out = OsRelease::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches(['"', '\'']).to_string();
            match key.trim() {
                "PRETTY_NAME" => out.pretty_name = value,
                "VERSION_CODENAME" => out.codename = value,
                "VERSION_ID" => out.version_id = value,
                "ID" => out.id = value,
                _ => {}
            }
        }
        out
    }
}

/// What brings the network up on the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkStack {
    /// dhcpcd (bullseye and older).
    Dhcpcd,
    /// NetworkManager (bookworm and later).
    NetworkManager,
    /// Neither could be identified.
    Unknown,
}

/// How the image configures itself on first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstBoot {
    /// cloud-init reading `user-data`/`meta-data`/`network-config` on the boot partition.
    CloudInit,
    /// raspberrypi-sys-mods' `firstboot` script named on `cmdline.txt`.
    Firstboot,
    /// Nothing recognised.
    None,
}

/// Everything later stages branch on.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// The OS release.
    pub os: OsRelease,
    /// The active network manager.
    pub network_stack: NetworkStack,
    /// Which evidence decided `network_stack`.
    pub network_stack_reason: String,
    /// The `dnsmasq` package (service and `/etc/dnsmasq.conf`) is installed.
    pub dnsmasq: bool,
    /// The `dnsmasq` binary is present (package `dnsmasq-base`).
    pub dnsmasq_base: bool,
    /// `iptables` is installed.
    pub iptables: bool,
    /// `nftables` (`nft`) is installed.
    pub nftables: bool,
    /// dhcpcd is installed as a service (`dhcpcd5`/`dhcpcd`), not just `dhcpcd-base`.
    pub dhcpcd: bool,
    /// NetworkManager is installed.
    pub network_manager: bool,
    /// `/etc/rc.local` exists.
    pub rc_local: bool,
    /// `/etc/sysctl.conf` exists.
    pub sysctl_conf: bool,
    /// cloud-init is installed or its seed files are on the boot partition.
    pub cloud_init: bool,
    /// `/lib` is a symlink to `usr/lib` (merged /usr).
    pub merged_usr: bool,
    /// Where `/etc/fstab` mounts the boot partition (`/boot/firmware` or `/boot`).
    pub boot_mount: String,
    /// The first-boot mechanism.
    pub first_boot: FirstBoot,
    /// Where packaged systemd units live (`/usr/lib/systemd/system` or `/lib/systemd/system`).
    pub systemd_unit_dir: String,
    /// What `/etc/machine-id` holds: `missing`, `empty`, `uninitialized` or `set` (a real id,
    /// or anything else non-empty). A `set` id is cloned into every node built from the image.
    pub machine_id: String,
    /// `/var/lib/dbus/machine-id` is a regular file with content (Debian's dbus makes it a
    /// symlink to `/etc/machine-id`; a regular file is a second copy of a cloned id).
    pub dbus_machine_id: bool,
    /// Files of [`NODE_STATE`] the image has: a base made from a booted card carries them, and
    /// every clone would share them.
    pub node_state: Vec<String>,
    /// The partition table: `mbr` or `gpt` (empty until [`Facts::note_table`]).
    pub partition_table: String,
    /// The MBR disk identifier as `PARTUUID=` names it (8 hex digits), or the GPT disk GUID.
    pub disk_id: String,
    /// The accounts in `/etc/passwd`, for the ids a new user gets. Not shown in plans: overlays
    /// read it through the `account` filter.
    #[serde(skip)]
    pub accounts: Vec<Account>,
}

/// One `/etc/passwd` entry, the fields pibake uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id, when the entry has a readable one.
    pub gid: Option<u32>,
}

/// The accounts of a passwd file (entries without a numeric uid are skipped).
pub fn accounts(passwd: &str) -> Vec<Account> {
    passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Account {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok(),
            })
        })
        .collect()
}

/// Installed package names from a dpkg status file.
pub fn installed_packages(status: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for stanza in status.split("\n\n") {
        let mut name = None;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Status:") {
                installed = v.split_whitespace().last() == Some("installed");
            }
        }
        if let (Some(n), true) = (name, installed) {
            out.insert(n);
        }
    }
    out
}

fn read_text(fs: &mut dyn FileOps, path: &str) -> Result<Option<String>, FsError> {
    match fs.read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(FsError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn exists(fs: &mut dyn FileOps, path: &str) -> Result<bool, FsError> {
    fs.exists(path)
}

/// Files a system creates once and keeps as its own, so clones of one image would share them:
/// NetworkManager's and systemd's per-machine secrets, systemd's random seed, and the leases
/// dnsmasq handed out.
pub const NODE_STATE: [&str; 4] = [
    "/var/lib/NetworkManager/secret_key",
    "/var/lib/systemd/credential.secret",
    "/var/lib/systemd/random-seed",
    "/var/lib/misc/dnsmasq.leases",
];

/// Read the facts from the root and boot filesystems of an image.
pub fn gather(root: &mut dyn FileOps, boot: &mut dyn FileOps) -> Result<Facts, FsError> {
    let os = read_text(root, "/etc/os-release")?
        .or(read_text(root, "/usr/lib/os-release")?)
        .map(|t| OsRelease::parse(&t))
        .unwrap_or_default();
    let packages = read_text(root, "/var/lib/dpkg/status")?
        .map(|t| installed_packages(&t))
        .unwrap_or_default();
    let has = |p: &str| packages.contains(p);

    let dnsmasq = has("dnsmasq");
    let dnsmasq_base = has("dnsmasq-base") || exists(root, "/usr/sbin/dnsmasq")?;
    let iptables = has("iptables") || exists(root, "/usr/sbin/iptables")?;
    let nftables = has("nftables") || exists(root, "/usr/sbin/nft")?;
    let dhcpcd = has("dhcpcd5") || has("dhcpcd");
    let network_manager = has("network-manager") || exists(root, "/usr/sbin/NetworkManager")?;

    let wants = "/etc/systemd/system/multi-user.target.wants";
    let (network_stack, network_stack_reason) =
        if exists(root, &format!("{wants}/NetworkManager.service"))? {
            (
                NetworkStack::NetworkManager,
                format!("NetworkManager.service is enabled ({wants})"),
            )
        } else if exists(root, &format!("{wants}/dhcpcd.service"))? {
            (
                NetworkStack::Dhcpcd,
                format!("dhcpcd.service is enabled ({wants})"),
            )
        } else if network_manager {
            (
                NetworkStack::NetworkManager,
                "network-manager is installed (no enabled network service found)".to_string(),
            )
        } else if dhcpcd {
            (
                NetworkStack::Dhcpcd,
                "dhcpcd is installed (no enabled network service found)".to_string(),
            )
        } else {
            (
                NetworkStack::Unknown,
                "neither NetworkManager nor dhcpcd is installed or enabled".to_string(),
            )
        };

    let rc_local = exists(root, "/etc/rc.local")?;
    let sysctl_conf = exists(root, "/etc/sysctl.conf")?;
    let mut cloud_seed = false;
    for f in ["/user-data", "/meta-data", "/network-config"] {
        cloud_seed |= exists(boot, f)?;
    }
    let cloud_init = cloud_seed || has("cloud-init");
    let merged_usr = matches!(root.stat("/lib"), Ok(s) if s.kind == Kind::Symlink);
    let systemd_unit_dir = if merged_usr || exists(root, "/usr/lib/systemd/system")? {
        "/usr/lib/systemd/system"
    } else {
        "/lib/systemd/system"
    }
    .to_string();

    let boot_mount = read_text(root, "/etc/fstab")?
        .and_then(|t| fstab_boot_mount(&t))
        .unwrap_or_else(|| {
            if os.codename == "bullseye" || os.codename == "buster" {
                "/boot".into()
            } else {
                "/boot/firmware".into()
            }
        });

    let machine_id = machine_id_state(read_text(root, "/etc/machine-id")?.as_deref()).to_string();
    let dbus_machine_id = match root.stat("/var/lib/dbus/machine-id") {
        Ok(s) if s.kind == Kind::File => !root
            .read("/var/lib/dbus/machine-id")?
            .trim_ascii()
            .is_empty(),
        Ok(_) | Err(FsError::NotFound(_)) => false,
        Err(e) => return Err(e),
    };

    let mut node_state = Vec::new();
    for path in NODE_STATE {
        if matches!(root.stat(path), Ok(s) if s.kind == Kind::File) {
            node_state.push(path.to_string());
        }
    }

    let accounts = accounts(&read_text(root, "/etc/passwd")?.unwrap_or_default());

    let cmdline = read_text(boot, "/cmdline.txt")?.unwrap_or_default();
    let first_boot = if cloud_seed || cmdline.contains("ds=nocloud") {
        FirstBoot::CloudInit
    } else if cmdline.contains("firstboot") {
        FirstBoot::Firstboot
    } else {
        FirstBoot::None
    };

    Ok(Facts {
        os,
        network_stack,
        network_stack_reason,
        dnsmasq,
        dnsmasq_base,
        iptables,
        nftables,
        dhcpcd,
        network_manager,
        rc_local,
        sysctl_conf,
        cloud_init,
        merged_usr,
        boot_mount,
        first_boot,
        systemd_unit_dir,
        machine_id,
        dbus_machine_id,
        node_state,
        partition_table: String::new(),
        disk_id: String::new(),
        accounts,
    })
}

impl Facts {
    /// Add what the partition table says (the filesystems cannot tell).
    pub fn note_table(&mut self, table: &crate::disk::partition::PartitionTable) {
        self.partition_table = match table.kind {
            crate::disk::partition::TableKind::Mbr => "mbr",
            crate::disk::partition::TableKind::Gpt => "gpt",
        }
        .into();
        self.disk_id = table.disk_id.clone();
    }
}

/// The state of an `/etc/machine-id` with content `text` (`None`: the file is missing).
pub(crate) fn machine_id_state(text: Option<&str>) -> &'static str {
    match text.map(str::trim) {
        None => "missing",
        Some("") => "empty",
        Some("uninitialized") => "uninitialized",
        Some(_) => "set",
    }
}

/// Whether `cmdline.txt` names the root partition's PARTUUID and `/etc/fstab` names both
/// partitions', as a bootable Raspberry Pi OS image must (unreadable files count as not).
pub fn partuuids_consistent(
    root: &mut dyn FileOps,
    boot: &mut dyn FileOps,
    root_uuid: &str,
    boot_uuid: &str,
) -> bool {
    let cmdline = boot.read("/cmdline.txt").unwrap_or_default();
    let fstab = root.read("/etc/fstab").unwrap_or_default();
    mentions_partuuid(&cmdline, root_uuid)
        && mentions_partuuid(&fstab, root_uuid)
        && mentions_partuuid(&fstab, boot_uuid)
}

/// Whether the text `hay` names `PARTUUID=uuid`.
pub(crate) fn mentions_partuuid(hay: &[u8], uuid: &str) -> bool {
    String::from_utf8_lossy(hay).contains(&format!("PARTUUID={uuid}"))
}

/// The mount point of the vfat entry in an fstab.
pub(crate) fn fstab_boot_mount(fstab: &str) -> Option<String> {
    fstab
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[2] == "vfat")
        .map(|f| f[1].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_os_release_and_dpkg_status() {
        let os = OsRelease::parse(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nVERSION_ID=\"12\"\nID=debian\n",
        );
        assert_eq!(os.codename, "bookworm");
        assert_eq!(os.version_id, "12");
        assert_eq!(os.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        let pk = installed_packages(
            "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: deinstall ok config-files\n\nPackage: c\nStatus: install ok installed\n",
        );
        assert_eq!(pk.into_iter().collect::<Vec<_>>(), ["a", "c"]);
        let acc = accounts(
            "root:x:0:0:root:/root:/bin/bash\nbroken\npi:x:1000:1000::/home/pi:/bin/bash\n",
        );
        assert_eq!(acc.len(), 2);
        assert_eq!(
            (acc[1].name.as_str(), acc[1].uid, acc[1].gid),
            ("pi", 1000, Some(1000))
        );
        assert_eq!(machine_id_state(None), "missing");
        assert_eq!(machine_id_state(Some("")), "empty");
        assert_eq!(machine_id_state(Some("uninitialized\n")), "uninitialized");
        assert_eq!(
            machine_id_state(Some("5e3da3da0123456789abcdef01234567\n")),
            "set"
        );
        assert_eq!(
            fstab_boot_mount(
                "proc /proc proc defaults 0 0\nPARTUUID=1-01  /boot/firmware  vfat    defaults 0 2\n"
            ),
            Some("/boot/firmware".into())
        );
    }
}
