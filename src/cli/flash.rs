//! `pibake flash IMAGE DEVICE`: write an image to a card, only its mapped blocks, then read them
//! back and compare.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::{BadInput, Ui};
use crate::disk::Image;
use crate::output::bmap::MappedRange;
use crate::output::flash::{self, DeviceTarget, FlashReport, Host, TargetInfo};

/// Arguments of `pibake flash`.
#[derive(clap::Args)]
#[command(after_help = "\
Writes only the blocks that hold data (from the bmap, or from the image's filesystems), syncs,
then reads every written range back and compares its sha256. A mismatch exits 1 and names the
first differing byte offset.

Refuses a device that is mounted, holds the running system, or is not removable, unless --force.
Asks before writing when run on a terminal, unless --yes.

Examples:
  pibake flash master.img.xz /dev/sdb
  pibake flash master.img /dev/mmcblk0 --bmap master.img.bmap --yes")]
pub struct Args {
    /// Image to write (.img, .img.xz, .img.zst, ...).
    pub image: PathBuf,
    /// The card's whole-disk device (e.g. /dev/sdb, /dev/mmcblk0), or a regular file.
    pub device: PathBuf,
    /// Block map to follow; default: IMAGE.bmap (or IMAGE without its extensions + .bmap) if
    /// present, else the blocks the image's filesystems use.
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,
    /// Write even to a device that is mounted, holds the system, or is not removable.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Run `pibake flash`.
pub fn run(args: &Args, ui: &Ui) -> anyhow::Result<()> {
    let image = super::open::image(&args.image, ui)?;
    let bmap = args.bmap.clone().or_else(|| discover_bmap(&args.image));
    if let Some(b) = &bmap {
        eprintln!("using block map {}", b.display());
    }
    let report = flash_image(
        &image,
        &args.device,
        bmap.as_deref(),
        args.force,
        args.yes,
        ui,
    )?;
    eprintln!("{}", summary(&args.image, &args.device, &report));
    Ok(())
}

/// Check `device`, ask for confirmation unless `yes`, write `image`'s mapped blocks (from
/// `bmap`, or from its filesystems) and verify them.
pub fn flash_image(
    image: &Image,
    device: &Path,
    bmap: Option<&Path>,
    force: bool,
    yes: bool,
    ui: &Ui,
) -> anyhow::Result<FlashReport> {
    let ranges = flash::ranges_for(image, bmap)?;
    let mut target = claim(device, image.disk.len(), force, yes)?;
    write_claimed(image, &mut target, &ranges, ui)
}

/// The safety checks and the confirmation, before anything is written: `pibake build --flash`
/// runs them before the build so a refusal costs nothing.
pub fn claim(
    device: &Path,
    image_len: u64,
    force: bool,
    yes: bool,
) -> anyhow::Result<DeviceTarget> {
    let (target, info) = flash::open_target(device, image_len, force, &Host::current())?;
    if let Some(disk) = &info.disk {
        for r in &disk.overridden {
            eprintln!("warning: --force: {r}");
        }
    }
    if !yes {
        confirm(&info)?;
    }
    Ok(target)
}

/// Write `ranges` of `image` to a target [`claim`] returned, then read them back and compare.
pub fn write_claimed(
    image: &Image,
    target: &mut DeviceTarget,
    ranges: &[MappedRange],
    ui: &Ui,
) -> anyhow::Result<FlashReport> {
    Ok(flash::flash(
        &image.disk,
        target,
        ranges,
        ui.progress.as_ref(),
    )?)
}

/// One line saying what flashing did.
pub fn summary(image: &Path, device: &Path, report: &FlashReport) -> String {
    format!(
        "flashed {} to {}: wrote and verified {} of {} bytes ({:.1}%) in {} ranges",
        image.display(),
        device.display(),
        report.written_bytes,
        report.image_bytes,
        percent(report.written_bytes, report.image_bytes),
        report.ranges
    )
}

/// Ask on the terminal; without one, refuse (the caller should pass --yes).
fn confirm(info: &TargetInfo) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(BadInput(format!(
            "{} would be overwritten and there is no terminal to confirm on; pass --yes",
            info.describe()
        ))
        .into());
    }
    eprint!(
        "Everything on {} will be overwritten. Type 'yes' to continue: ",
        info.describe()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(BadInput("not confirmed; nothing was written".into()).into())
    }
}

/// bmaptool's convention: IMAGE.bmap, then the name with one extension fewer, and so on.
fn discover_bmap(image: &Path) -> Option<PathBuf> {
    let mut name = image.to_path_buf();
    loop {
        let candidate = PathBuf::from(format!("{}.bmap", name.display()));
        if candidate.is_file() {
            return Some(candidate);
        }
        name.extension()?;
        name = name.with_extension("");
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}
