//! `pibake plan` and `pibake build`.

use std::path::PathBuf;

use super::Ui;
use super::fetch::BaseArgs;
use crate::bake::{self, Extras, ImagerRequest, Options};

/// What `plan` and `build` share.
#[derive(clap::Args)]
pub struct Common {
    /// The recipe (TOML): hostname, user, SSH, Wi-Fi, LAN, locale.
    pub recipe: PathBuf,
    /// Base image (raw or compressed), overriding `[image] base` in the recipe. Never modified.
    #[arg(long, value_name = "SOURCE")]
    pub base: Option<PathBuf>,
    /// Which of the role's stacks to build with: `auto` takes the first whose needs the image
    /// meets. The master's are `classic` (dhcpcd + dnsmasq + iptables + rc.local, needs those in
    /// the image) and `modern` (what every current Lite image has); `pibake plan` says which.
    #[arg(long, value_name = "STACK", default_value = "auto")]
    pub stack: String,
    /// Extra overlay directory (overlay.toml + templates), applied after the role's; repeatable.
    #[arg(long = "overlay", value_name = "DIR")]
    pub overlays: Vec<PathBuf>,
    /// Directory of roles, one subdirectory (overlay.toml + templates) per role, searched
    /// before the built-in ones for the recipe's `[node] role` and for `extends`; repeatable.
    #[arg(long = "roles", value_name = "DIR")]
    pub roles: Vec<PathBuf>,
    /// Timestamp for everything written (seconds since 1970); default: the recipe's
    /// `[build] epoch`, then SOURCE_DATE_EPOCH, then now.
    #[arg(long)]
    pub epoch: Option<i64>,
    #[command(flatten)]
    pub acquire: BaseArgs,
}

impl Common {
    fn options(&self, output: Option<&std::path::Path>) -> Options {
        Options {
            recipe: self.recipe.clone(),
            document: None,
            base: self.base.as_ref().map(|b| b.display().to_string()),
            stack: self.stack.clone(),
            overlays: self.overlays.clone(),
            roles: self.roles.clone(),
            epoch: self.epoch,
            acquire: self.acquire.options(),
            trust_cache: true,
            decode_first: output.is_some_and(|o| {
                crate::output::Format::from_path(o).ok() == Some(crate::output::Format::Raw)
            }),
        }
    }
}

/// Arguments of `pibake plan`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pibake plan master.toml --base raspios-bookworm-arm64-lite.img.xz\n  pibake plan master.toml --stack classic --json"
)]
pub struct PlanArgs {
    #[command(flatten)]
    pub common: Common,
    /// Print the plan as JSON (secrets redacted).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `pibake build`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  SOURCE_DATE_EPOCH=1735689600 pibake build master.toml --base raspios.img.xz -o master.img\n\nWrites OUT and OUT.manifest.json (input and output sha256, the recipe with secrets redacted, the plan)."
)]
pub struct BuildArgs {
    #[command(flatten)]
    pub common: Common,
    /// Output image: `.img` (sparse raw), `.img.xz` (multi-threaded, 24 MiB blocks) or `.img.zst`.
    #[arg(short, long, value_name = "OUT", default_value = "pibake.img")]
    pub output: PathBuf,
    /// Also write OUT.bmap (bmaptool 2.0): the blocks the filesystems use, with checksums, so
    /// `bmaptool copy` and `pibake flash` skip free space.
    #[arg(long)]
    pub bmap: bool,
    /// Also write a Raspberry Pi Imager repository file (`os_list` with one entry: sizes,
    /// sha256s, release date from the build epoch). Load it in Imager as a custom repository.
    #[arg(long, value_name = "FILE")]
    pub imager_json: Option<PathBuf>,
    /// Name shown in Imager; default: "HOSTNAME (ROLE)".
    #[arg(long, value_name = "TEXT", requires = "imager_json")]
    pub imager_name: Option<String>,
    /// Description shown in Imager; default names the role and the base release.
    #[arg(long, value_name = "TEXT", requires = "imager_json")]
    pub imager_description: Option<String>,
    /// Where Imager downloads the image; default: OUT's file name, relative to the JSON.
    #[arg(long, value_name = "URL", requires = "imager_json")]
    pub imager_url: Option<String>,
    /// Imager's customisation mode for the entry. `none` stops Imager offering to customise an
    /// image that is already configured.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "none",
        requires = "imager_json"
    )]
    pub init_format: String,
    /// After building, write the image to this card (only its mapped blocks) and read it back.
    /// The device is checked, and confirmation asked, before the build starts.
    #[arg(long, value_name = "DEVICE")]
    pub flash: Option<PathBuf>,
    /// With --flash: write even to a device that is mounted, holds the system, or is not
    /// removable.
    #[arg(long, requires = "flash")]
    pub force: bool,
    /// With --flash: do not ask for confirmation.
    #[arg(long, short = 'y', requires = "flash")]
    pub yes: bool,
}

/// Run `pibake plan`.
pub fn plan(args: &PlanArgs, ui: &Ui) -> anyhow::Result<()> {
    let p = bake::prepare(&args.common.options(None), ui.progress.as_ref())?;
    if args.json {
        let mut j = p.plan.redacted_json();
        j["base_access"] = serde_json::to_value(&p.image.access)?;
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!("Base: {}", p.image.access.describe());
        print!("{}", p.plan.render_text());
    }
    Ok(())
}

/// Run `pibake build`.
pub fn build(args: &BuildArgs, ui: &Ui) -> anyhow::Result<()> {
    let mut p = bake::prepare(
        &args.common.options(Some(&args.output)),
        ui.progress.as_ref(),
    )?;
    let mut card = match &args.flash {
        Some(dev) => Some(super::flash::claim(
            dev,
            p.image.disk.len(),
            args.force,
            args.yes,
        )?),
        None => None,
    };
    let extras = Extras {
        bmap: args.bmap,
        bmap_hashes: None,
        xz_pieces: None,
        imager: args.imager_json.as_ref().map(|path| ImagerRequest {
            path: path.clone(),
            name: args.imager_name.clone(),
            description: args.imager_description.clone(),
            url: args.imager_url.clone(),
            init_format: args.init_format.clone(),
        }),
    };
    let built = bake::build(&mut p, &args.output, &extras, ui.progress.as_ref())?;
    eprintln!(
        "built {} ({} stack, {} of {} operations changed something)\n  base: {}\n  output: {}\n  sha256 {}",
        built.output.path.display(),
        p.plan.stack,
        built.changed,
        built.total,
        p.image.access.describe(),
        built.route.describe(),
        built.output.sha256,
    );
    if let Some(b) = &built.bmap {
        eprintln!(
            "  bmap {} ({} of {} blocks mapped)",
            b.path.display(),
            b.mapped_blocks,
            b.blocks
        );
    }
    if let Some(j) = &built.imager {
        eprintln!("  imager repository {}", j.display());
    }
    eprintln!("  manifest {}", built.manifest.display());
    if let (Some(target), Some(dev)) = (card.as_mut(), &args.flash) {
        let ranges = crate::output::flash::ranges_for(
            &p.image,
            built.bmap.as_ref().map(|b| b.path.as_path()),
        )?;
        let report = super::flash::write_claimed(&p.image, target, &ranges, ui)?;
        eprintln!(
            "{}",
            super::flash::summary(&built.output.path, dev, &report)
        );
    }
    Ok(())
}

/// Arguments of `pibake verify`.
#[derive(clap::Args)]
#[command(
    after_help = "Rebuilds from the inputs the manifest records (base, recipe, stack, overlays, epoch)\nand exits 0 only if the result is byte-identical to the recorded output."
)]
pub struct VerifyArgs {
    /// A manifest written by `pibake build` (OUT.manifest.json).
    pub manifest: PathBuf,
    #[command(flatten)]
    pub acquire: BaseArgs,
}

/// Run `pibake verify`.
pub fn verify(args: &VerifyArgs, ui: &Ui) -> anyhow::Result<()> {
    crate::cluster::verify::refuse_node_manifest(&args.manifest)?;
    let v = bake::verify(
        &args.manifest,
        &args.acquire.options(),
        ui.progress.as_ref(),
    )?;
    if v.actual == v.expected {
        eprintln!("reproduced: sha256 {}", v.actual);
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "not reproducible: the rebuild has sha256 {}, the manifest records {}",
            v.actual,
            v.expected
        ))
    }
}
