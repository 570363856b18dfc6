//! `pibake cluster plan`: a whole cluster from one inventory file.

use std::path::PathBuf;

use crate::cluster;
use crate::overlay::Layers;
use crate::recipe::RecipeReadError;

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
}

/// Run `pibake cluster ...`.
pub fn run(args: &Args, _ui: &super::Ui) -> anyhow::Result<()> {
    match &args.command {
        ClusterCommand::Plan { inventory, roles } => {
            let text = std::fs::read_to_string(inventory).map_err(|source| RecipeReadError {
                path: inventory.clone(),
                source,
            })?;
            let layers = Layers::resolve("master", roles, &[])?;
            let inv = cluster::inventory::parse(
                &inventory.display().to_string(),
                &text,
                &cluster::lan_defaults(&layers),
            )?;
            // Every node's recipe is checked against its role, as a build would.
            for node in inv.nodes() {
                let layers = Layers::resolve(&node.role, roles, &[])?;
                inv.recipe(node, &text).validate(&layers)?;
            }
            print!("{}", inv.render());
        }
    }
    Ok(())
}
