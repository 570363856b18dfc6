//! `pibake plan` and `pibake build`.

use std::path::PathBuf;

use super::Ui;
use crate::bake::{self, Options};
use crate::plan::StackChoice;

/// What `plan` and `build` share.
#[derive(clap::Args)]
pub struct Common {
    /// The recipe (TOML): hostname, user, SSH, Wi-Fi, LAN, locale.
    pub recipe: PathBuf,
    /// Base image (raw or compressed), overriding `[image] base` in the recipe. Never modified.
    #[arg(long, value_name = "SOURCE")]
    pub base: Option<PathBuf>,
    /// How to build the master's networking: `classic` (dhcpcd + dnsmasq + iptables + rc.local,
    /// needs those in the image), `modern` (what every current Lite image has), or `auto`.
    #[arg(long, value_enum, default_value_t = StackChoice::Auto)]
    pub stack: StackChoice,
    /// Extra overlay directory (overlay.toml + templates), applied after the role's; repeatable.
    #[arg(long = "overlay", value_name = "DIR")]
    pub overlays: Vec<PathBuf>,
    /// Timestamp for everything written (seconds since 1970); default: the recipe's
    /// `[build] epoch`, then SOURCE_DATE_EPOCH, then now.
    #[arg(long)]
    pub epoch: Option<i64>,
}

impl Common {
    fn options(&self) -> Options {
        Options {
            recipe: self.recipe.clone(),
            base: self.base.as_ref().map(|b| b.display().to_string()),
            stack: self.stack,
            overlays: self.overlays.clone(),
            epoch: self.epoch,
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
}

/// Run `pibake plan`.
pub fn plan(args: &PlanArgs, ui: &Ui) -> anyhow::Result<()> {
    let p = bake::prepare(&args.common.options(), ui.progress.as_ref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p.plan.redacted_json())?);
    } else {
        print!("{}", p.plan.render_text());
    }
    Ok(())
}

/// Run `pibake build`.
pub fn build(args: &BuildArgs, ui: &Ui) -> anyhow::Result<()> {
    let p = bake::prepare(&args.common.options(), ui.progress.as_ref())?;
    let stack = p.plan.stack.clone();
    let built = bake::build(p, &args.output, ui.progress.as_ref())?;
    eprintln!(
        "built {} ({} stack, {} of {} operations changed something)\n  sha256 {}\n  manifest {}",
        built.output.path.display(),
        stack,
        built.changed,
        built.total,
        built.output.sha256,
        built.manifest.display()
    );
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
}

/// Run `pibake verify`.
pub fn verify(args: &VerifyArgs, ui: &Ui) -> anyhow::Result<()> {
    let v = bake::verify(&args.manifest, ui.progress.as_ref())?;
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
