//! Opening images for commands, with progress while a compressed image is decoded.

use std::path::Path;

use anyhow::Context;

use super::Ui;
use crate::compress;
use crate::disk::{Image, ImageError};
use crate::fs::ext4::Ext4;
use crate::fs::fat::Fat;

/// Open `path` read-only, showing decode progress for compressed images: one that can only be
/// read from its start is decoded to a temporary sparse file first, removed with the image.
pub fn image(path: &Path, ui: &Ui) -> anyhow::Result<Image> {
    let (compression, reason) = match Image::open(path) {
        Err(ImageError::NotDecoded {
            compression,
            reason,
            ..
        }) => (compression, reason),
        opened => return Ok(opened?),
    };
    let decode_err = |source| ImageError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix("pibake-decoded-")
        .suffix(".img")
        .tempfile()
        .map_err(|e| decode_err(e.into()))?;
    let (mut file, tmp_path) = tmp.into_parts();
    let mut started = false;
    let decoded = compress::decode_to(path, compression, &mut file, &mut |done| {
        if !started {
            ui.progress.begin("decoding", None);
            started = true;
        }
        ui.progress.set(done);
    });
    if started {
        ui.progress.end();
    }
    decoded.map_err(decode_err)?;
    drop(file);
    let tmp = tmp_path.to_path_buf();
    Ok(Image::open_decoded(
        path,
        &tmp,
        compression,
        reason,
        Some(tmp_path),
    )?)
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
