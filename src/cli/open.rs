//! Opening images for commands, with progress while a compressed image is decoded.

use std::path::Path;

use anyhow::Context;

use super::Ui;
use crate::disk::Image;
use crate::fs::ext4::Ext4;
use crate::fs::fat::Fat;

/// Open `path` read-only, showing decode progress for compressed images.
pub fn image(path: &Path, ui: &Ui) -> anyhow::Result<Image> {
    let mut started = false;
    let image = Image::open_with_progress(path, &mut |done| {
        if !started {
            ui.progress.begin("decoding", None);
            started = true;
        }
        ui.progress.set(done);
    });
    if started {
        ui.progress.end();
    }
    Ok(image?)
}

/// The root filesystem of `image`, read-only.
pub fn root(image: &Image) -> anyhow::Result<Ext4> {
    let part = image.root()?;
    let region = image
        .region(part, false)
        .context("opening the root partition")?;
    Ok(Ext4::open(region, 0)?)
}

/// The boot filesystem of `image`, read-only.
pub fn boot(image: &Image) -> anyhow::Result<Fat> {
    let part = image.boot()?;
    let region = image
        .region(part, false)
        .context("opening the boot partition")?;
    Ok(Fat::open(region, 0)?)
}
