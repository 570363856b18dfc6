//! `build`: apply the plan, write the image by the cheapest route, then its extras (block map,
//! Imager file) and its manifest.

use std::path::{Path, PathBuf};

use super::manifest::{BaseInput, Inputs, Manifest, OutputRecord, RecipeInput};
use super::route::{apply_and_write, raw_sha256};
use super::{Prepared, sha256_file};
use crate::output::route::Route;
use crate::progress::Progress;

/// What `build` writes besides the image itself.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Also write `OUT.bmap` (bmaptool format 2.0).
    pub bmap: bool,
    /// Also write a Raspberry Pi Imager repository file with one entry for the image.
    pub imager: Option<ImagerRequest>,
    /// Block-map hashes shared with other builds over the same base (a cluster's nodes).
    pub bmap_hashes: Option<std::sync::Arc<crate::output::bmap::BaseHashes>>,
    /// Compressed pieces and decoded blocks shared with other builds over the same `.xz` base.
    pub xz_pieces: Option<std::sync::Arc<crate::output::xz_patch::Pieces>>,
}

/// `--imager-json` and the fields of its entry.
#[derive(Debug, Clone, Default)]
pub struct ImagerRequest {
    /// Where to write the repository JSON.
    pub path: PathBuf,
    /// Entry name; default from the recipe's hostname and role.
    pub name: Option<String>,
    /// Entry description; default names the base release.
    pub description: Option<String>,
    /// Download URL; default: the output's file name, relative to the JSON.
    pub url: Option<String>,
    /// Imager's `init_format`.
    pub init_format: String,
}

/// What `build` produced.
#[derive(Debug)]
pub struct Built {
    /// The image written.
    pub output: crate::output::Written,
    /// How it was produced from the base.
    pub route: Route,
    /// The block map, when asked for.
    pub bmap: Option<crate::output::bmap::BmapWritten>,
    /// The Imager repository file, when asked for.
    pub imager: Option<PathBuf>,
    /// The manifest written beside it.
    pub manifest: PathBuf,
    /// Operations that changed something.
    pub changed: usize,
    /// All operations.
    pub total: usize,
}

/// Apply the plan and write `out` plus `out.manifest.json`, and the extras asked for.
/// `p` stays usable afterwards (its image is the built one), e.g. to flash it.
pub fn build(
    p: &mut Prepared,
    out: &Path,
    extras: &Extras,
    progress: &dyn Progress,
) -> anyhow::Result<Built> {
    let (report, mut output, route) =
        apply_and_write(p, out, extras.xz_pieces.as_deref(), progress)?;
    if output.raw_sha256.is_none() && extras.imager.is_some() {
        // Imager checks the extracted image's SHA-256: the one thing the patch route skipped.
        output.raw_sha256 = Some(raw_sha256(p, progress)?);
    }
    let mut outputs = vec![OutputRecord::Image {
        path: output.path.clone(),
        format: serde_json::to_value(output.format)?,
        bytes: output.bytes,
        sha256: output.sha256.clone(),
        raw_bytes: output.raw_bytes,
        raw_sha256: output.raw_sha256.clone(),
        route: serde_json::to_value(&route)?,
    }];
    let bmap = if extras.bmap {
        let ranges = crate::output::bmap::mapped_ranges(&p.image)?;
        let dest = PathBuf::from(format!("{}.bmap", out.display()));
        let shared = extras.bmap_hashes.as_deref();
        let b =
            crate::output::bmap::write_sharing(&p.image.disk, &ranges, &dest, shared, progress)?;
        outputs.push(OutputRecord::Bmap {
            path: b.path.clone(),
            format: "bmap".into(),
            bytes: b.bytes,
            sha256: b.sha256.clone(),
            blocks: b.blocks,
            mapped_blocks: b.mapped_blocks,
        });
        Some(b)
    } else {
        None
    };
    let imager = match &extras.imager {
        Some(req) => {
            let entry = crate::output::imager::entry(&imager_info(p, req), &output);
            crate::output::imager::write(&req.path, vec![entry])?;
            outputs.push(OutputRecord::File {
                path: req.path.clone(),
                format: "imager-json".into(),
                sha256: sha256_file(&req.path)?,
            });
            Some(req.path.clone())
        }
        None => None,
    };
    let changed = report.iter().filter(|c| **c).count();
    let manifest = Manifest {
        pibake: env!("CARGO_PKG_VERSION").to_string(),
        inputs: Inputs {
            base: BaseInput {
                path: p.base.clone(),
                sha256: p.base_sha256.clone(),
                compression: serde_json::to_value(p.image.compression)?,
                access: serde_json::to_value(&p.image.access)?,
                xz_blocks_decoded: p.image.xz.as_ref().map(|x| x.blocks_decoded()),
            },
            recipe: RecipeInput {
                path: p.recipe_path.clone(),
                sha256: sha256_file(&p.recipe_path)?,
                content: p.recipe.redacted(),
            },
            overlays: p.overlay_dirs.clone(),
            roles: p.role_dirs.clone(),
            stack: p.plan.stack.clone(),
            epoch: p.plan.epoch,
            epoch_source: p.epoch_source.clone(),
        },
        plan: p.plan.redacted_json(),
        changed_operations: changed,
        outputs,
    };
    let manifest_path = Manifest::path_for(out);
    manifest.write(&manifest_path)?;
    Ok(Built {
        output,
        route,
        bmap,
        imager,
        manifest: manifest_path,
        changed,
        total: report.len(),
    })
}

/// The Imager entry's words: what the user gave, else defaults from the recipe and the base.
fn imager_info(p: &Prepared, req: &ImagerRequest) -> crate::output::imager::EntryInfo {
    let hostname = p.recipe.str("node", "hostname").unwrap_or("node");
    let role = p.recipe.role();
    let os = &p.facts.os;
    crate::output::imager::EntryInfo {
        name: req
            .name
            .clone()
            .unwrap_or_else(|| format!("{hostname} ({role})")),
        description: req.description.clone().unwrap_or_else(|| {
            format!(
                "Cluster {} baked by pibake from {}",
                role,
                if os.pretty_name.is_empty() {
                    "Raspberry Pi OS"
                } else {
                    &os.pretty_name
                }
            )
        }),
        url: req.url.clone(),
        icon: None,
        init_format: req.init_format.clone(),
        epoch: p.plan.epoch,
        devices: Vec::new(),
    }
}
