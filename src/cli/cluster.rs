//! `pibake cluster plan`, `build` and `flash`: a whole cluster from one inventory file.

use std::path::PathBuf;

use crate::cluster;

/// `pibake cluster ...`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Show every node of an inventory and what each learns of the others; writes nothing.
    ///
    /// The inventory (cluster.toml) names the cluster and its domain, the settings every node
    /// inherits ([defaults.SECTION], recipe sections), the master ([master] hostname and its
    /// recipe sections such as [master.network]) and the workers, listed ([[worker]] hostname,
    /// mac, address) or generated ([workers] pattern = "node{:02}", count, first_address).
    /// Duplicate names, MACs or addresses, and addresses outside the LAN, inside the DHCP pool
    /// or equal to the master's, are refused with the line they are on.
    Plan {
        /// The inventory file.
        inventory: PathBuf,
        /// Directory of roles, searched before the built-in ones (for the master's defaults).
        #[arg(long, value_name = "DIR")]
        roles: Vec<PathBuf>,
    },
    /// Bake every node of an inventory: DIR/HOSTNAME.img.xz (and .bmap) for the master and each
    /// worker, from one base opened once, plus DIR/cluster.manifest.json.
    ///
    /// Keys are made on the first build and kept in the secrets directory (0700; default
    /// INVENTORY-STEM.secrets beside the inventory): the cluster key the master's user logs into
    /// the workers with, and every node's SSH host key, which the master's known hosts list, so
    /// its first `ssh node03` never asks. Keep that directory: later builds reuse it and so give
    /// the same images. Nothing secret is printed or written to a manifest.
    ///
    /// A node whose inputs did not change since the last build into DIR is left as it is (its
    /// image stays byte for byte the same); adding a worker rewrites only it and the master.
    #[command(
        after_help = "Examples:\n  pibake cluster build cluster.toml -o images/\n  SOURCE_DATE_EPOCH=1735689600 pibake cluster build cluster.toml -o images/ --format img"
    )]
    Build {
        /// The inventory file.
        inventory: PathBuf,
        /// The directory the images go to (created if missing); default INVENTORY-STEM.images
        /// beside the inventory.
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Output format of every image: img.xz (default, or the inventory's [cluster] format),
        /// img (sparse raw) or img.zst.
        #[arg(long, value_name = "EXT")]
        format: Option<String>,
        /// The secrets directory (made 0700 if missing).
        #[arg(long, value_name = "DIR")]
        secrets: Option<PathBuf>,
        /// Do not write a .bmap beside each image.
        #[arg(long)]
        no_bmap: bool,
        /// Write every node again, even those whose inputs did not change.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: Box<ClusterCommon>,
    },
    /// Rebuild every node of the last `cluster build` and compare each image with it.
    ///
    /// Uses the same inventory, secrets, base and epoch (all recorded in
    /// DIR/cluster.manifest.json), redoes every step without the cache's shortcuts, in a
    /// scratch directory under DIR that is removed after. Exits 0 only if every node is
    /// byte-identical; refuses when the inventory or the base changed since the build.
    Verify {
        /// The inventory file.
        inventory: PathBuf,
        /// The directory `cluster build` wrote to; default INVENTORY-STEM.images.
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Directory of roles the build used; repeatable.
        #[arg(long = "roles", value_name = "DIR")]
        roles: Vec<PathBuf>,
        #[command(flatten)]
        acquire: super::fetch::BaseArgs,
    },
    /// Write one node's image, as the last `cluster build` made it, to a card.
    ///
    /// Refuses when the inventory changed since that build or the image was touched after it
    /// (build again first: only changed nodes are rewritten), then flashes like `pibake flash`:
    /// only the mapped blocks (the node's .bmap), synced, read back and compared.
    #[command(
        after_help = "Examples:\n  pibake cluster build cluster.toml\n  pibake cluster flash cluster.toml node03 /dev/sdb\n  pibake cluster flash cluster.toml master /dev/mmcblk0 -o images/ --yes"
    )]
    Flash {
        /// The inventory file.
        inventory: PathBuf,
        /// The node's host name (as `cluster plan` lists it).
        node: String,
        /// The card's whole-disk device (e.g. /dev/sdb, /dev/mmcblk0), or a regular file.
        device: PathBuf,
        /// The directory `cluster build` wrote to; default INVENTORY-STEM.images.
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Write even to a device that is mounted, holds the system, or is not removable.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// What `cluster build` shares with `build`.
#[derive(clap::Args, Debug)]
struct ClusterCommon {
    /// Base image of every node, overriding the inventory's [cluster] base. Never modified.
    #[arg(long, value_name = "SOURCE")]
    base: Option<PathBuf>,
    /// Stack of the master (see `pibake build --help`).
    #[arg(long, value_name = "STACK", default_value = "auto")]
    stack: String,
    /// Directory of roles, searched before the built-in ones; repeatable.
    #[arg(long = "roles", value_name = "DIR")]
    roles: Vec<PathBuf>,
    /// Timestamp for everything written; default: the inventory's [defaults.build] epoch, then
    /// SOURCE_DATE_EPOCH, then the previous build's, then now.
    #[arg(long)]
    epoch: Option<i64>,
    #[command(flatten)]
    acquire: super::fetch::BaseArgs,
}

/// Run `pibake cluster ...`.
pub fn run(args: &Args, ui: &super::Ui) -> anyhow::Result<()> {
    match &args.command {
        ClusterCommand::Plan { inventory, roles } => {
            let (inv, text) = cluster::build::load_inventory(inventory, roles)?;
            cluster::build::validate_nodes(&inv, &text, roles, &[])?;
            print!("{}", inv.render());
        }
        ClusterCommand::Build {
            inventory,
            output,
            format,
            secrets,
            no_bmap,
            force,
            common,
        } => {
            let output = &images_dir(output, inventory);
            let req = cluster::build::Request {
                inventory: inventory.clone(),
                out_dir: output.clone(),
                format: format.clone(),
                secrets: secrets.clone(),
                bmap: !no_bmap,
                force: *force,
                options: crate::bake::Options {
                    recipe: inventory.clone(),
                    document: None,
                    base: common.base.as_ref().map(|b| b.display().to_string()),
                    stack: common.stack.clone(),
                    overlays: Vec::new(),
                    roles: common.roles.clone(),
                    epoch: common.epoch,
                    acquire: common.acquire.options(),
                    trust_cache: true,
                    decode_first: false,
                },
            };
            let m = cluster::build::build(&req, ui.progress.as_ref())?;
            for n in &m.nodes {
                let how = if n.written == "unchanged" {
                    "unchanged".to_string()
                } else {
                    format!("{} bytes", n.bytes)
                };
                println!(
                    "{:<8} {:<16} {}  {how}",
                    n.role,
                    n.hostname,
                    n.image.display()
                );
            }
            println!(
                "cluster {} ({} nodes): {}",
                m.name,
                m.nodes.len(),
                output.join("cluster.manifest.json").display()
            );
            println!("secrets kept in {}", m.secrets.display());
        }
        ClusterCommand::Verify {
            inventory,
            output,
            roles,
            acquire,
        } => {
            let dir = images_dir(output, inventory);
            let checks = cluster::verify::verify(
                inventory,
                &dir,
                roles,
                &acquire.options(),
                ui.progress.as_ref(),
            )?;
            let differ: Vec<_> = checks.iter().filter(|c| c.actual != c.expected).collect();
            for c in &checks {
                let how = if c.actual == c.expected {
                    "reproduced".to_string()
                } else {
                    format!("DIFFERS: rebuilt {}", c.actual)
                };
                println!("{:<16} sha256 {}  {how}", c.hostname, c.expected);
            }
            if !differ.is_empty() {
                let names: Vec<_> = differ.iter().map(|c| c.hostname.as_str()).collect();
                anyhow::bail!(
                    "not reproducible: {} of {} nodes differ ({})",
                    differ.len(),
                    checks.len(),
                    names.join(", ")
                );
            }
            eprintln!("reproduced: all {} nodes byte-identical", checks.len());
        }
        ClusterCommand::Flash {
            inventory,
            node,
            device,
            output,
            force,
            yes,
        } => {
            let dir = images_dir(output, inventory);
            let rec = cluster::pick::pick(inventory, &dir, node)?;
            eprintln!(
                "{} ({}, {}): {}",
                rec.hostname,
                rec.role,
                rec.address,
                rec.image.display()
            );
            let image = super::open::image(&rec.image, ui)?;
            let report =
                super::flash::flash_image(&image, device, rec.bmap.as_deref(), *force, *yes, ui)?;
            eprintln!("{}", super::flash::summary(&rec.image, device, &report));
        }
    }
    Ok(())
}

/// `-o DIR`, else the inventory's default images directory.
fn images_dir(output: &Option<PathBuf>, inventory: &std::path::Path) -> PathBuf {
    output
        .clone()
        .unwrap_or_else(|| cluster::build::default_images_dir(inventory))
}
