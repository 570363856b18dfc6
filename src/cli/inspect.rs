//! `pibake inspect`: what an image is, as later steps will see it.

use std::path::PathBuf;

use serde::Serialize;

use super::{Ui, open};
use crate::compress::Compression;
use crate::disk::{Partition, TableKind};
use crate::facts::{self, Facts, OsRelease};

/// Arguments of `pibake inspect`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pibake inspect 2025-05-13-raspios-bookworm-arm64-lite.img.xz\n  pibake inspect golden.img --json | jq .facts"
)]
pub struct Args {
    /// Image to read: raw .img, or compressed .img.xz / .img.zst / .img.gz. Never modified.
    pub image: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything `inspect` reports; `--json` prints exactly this.
#[derive(Serialize)]
pub struct Report {
    /// The file inspected.
    pub image: PathBuf,
    /// How it was compressed.
    pub compression: Compression,
    /// Size of the raw image in bytes.
    pub image_bytes: u64,
    /// MBR or GPT.
    pub table: TableKind,
    /// Disk signature or GUID.
    pub disk_id: String,
    /// The partitions.
    pub partitions: Vec<Partition>,
    /// The OS release.
    pub os: OsRelease,
    /// Facts later steps branch on.
    pub facts: Facts,
    /// Features of the root ext4 filesystem.
    pub ext4_features: Vec<String>,
    /// Whether `cmdline.txt` and `/etc/fstab` name this disk's PARTUUIDs.
    pub partuuids_consistent: bool,
}

/// Build the report for an image.
pub fn report(path: &std::path::Path, ui: &Ui) -> anyhow::Result<Report> {
    let image = open::image(path, ui)?;
    let mut root = open::root(&image)?;
    let mut boot = open::boot(&image)?;
    let mut facts = facts::gather(&mut root, &mut boot)?;
    facts.note_table(&image.table);
    let ext4 = root.info()?;
    let partuuids_consistent = facts::partuuids_consistent(
        &mut root,
        &mut boot,
        &image.root()?.partuuid,
        &image.boot()?.partuuid,
    );
    Ok(Report {
        image: path.to_path_buf(),
        compression: image.compression,
        image_bytes: image.disk.len(),
        table: image.table.kind,
        disk_id: image.table.disk_id.clone(),
        partitions: image.table.partitions.clone(),
        os: facts.os.clone(),
        facts,
        ext4_features: ext4.features,
        partuuids_consistent,
    })
}

/// Run `pibake inspect`.
pub fn run(args: &Args, ui: &Ui) -> anyhow::Result<()> {
    let r = report(&args.image, ui)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render(&r));
    }
    Ok(())
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The human-readable form.
fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let f = &r.facts;
    let _ = writeln!(
        o,
        "image       {} ({}, {} raw)",
        r.image.display(),
        r.compression.name(),
        size(r.image_bytes)
    );
    let table = match r.table {
        TableKind::Mbr => "MBR",
        TableKind::Gpt => "GPT",
    };
    let _ = writeln!(o, "table       {table}, disk id {}", r.disk_id);
    let _ = writeln!(
        o,
        "  {:<3}{:<38}{:>10}{:>11}  {:<6}{:<10}PARTUUID",
        "#", "type", "start", "size", "fs", "label"
    );
    for p in &r.partitions {
        let _ = writeln!(
            o,
            "  {:<3}{:<38}{:>10}{:>11}  {:<6}{:<10}{}",
            p.index,
            p.type_id,
            p.start,
            size(p.bytes()),
            p.fs.name(),
            p.label.as_deref().unwrap_or("-"),
            p.partuuid
        );
    }
    let _ = writeln!(
        o,
        "os          {} (codename {})",
        if r.os.pretty_name.is_empty() {
            "unknown"
        } else {
            &r.os.pretty_name
        },
        if r.os.codename.is_empty() {
            "unknown"
        } else {
            &r.os.codename
        }
    );
    let stack = match f.network_stack {
        crate::facts::NetworkStack::Dhcpcd => "dhcpcd",
        crate::facts::NetworkStack::NetworkManager => "NetworkManager",
        crate::facts::NetworkStack::Unknown => "unknown",
    };
    let first_boot = match f.first_boot {
        crate::facts::FirstBoot::CloudInit => "cloud-init (seed files on the boot partition)",
        crate::facts::FirstBoot::Firstboot => "raspberrypi-sys-mods firstboot",
        crate::facts::FirstBoot::None => "none recognised",
    };
    let _ = writeln!(o, "facts");
    let rows: [(&str, String); 13] = [
        (
            "network stack",
            format!("{stack} ({})", f.network_stack_reason),
        ),
        ("dnsmasq", yes(f.dnsmasq).into()),
        ("dnsmasq-base", yes(f.dnsmasq_base).into()),
        ("iptables", yes(f.iptables).into()),
        ("nftables", yes(f.nftables).into()),
        ("dhcpcd", yes(f.dhcpcd).into()),
        ("/etc/rc.local", yes(f.rc_local).into()),
        ("/etc/sysctl.conf", yes(f.sysctl_conf).into()),
        ("cloud-init", yes(f.cloud_init).into()),
        ("first boot", first_boot.into()),
        ("merged /usr", yes(f.merged_usr).into()),
        ("boot mounted at", f.boot_mount.clone()),
        (
            "PARTUUIDs",
            if r.partuuids_consistent {
                "consistent with cmdline.txt and fstab".into()
            } else {
                "cmdline.txt or fstab names another disk".into()
            },
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(o, "  {k:<18}{v}");
    }
    let _ = writeln!(o, "ext4        {}", r.ext4_features.join(" "));
    o
}
