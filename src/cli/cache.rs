//! `pibake cache ls`, `pibake cache verify` and `pibake cache clean`.

use std::path::PathBuf;
use std::time::Duration;

use crate::acquire::cache::{self, Cache};

/// `pibake cache ...`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Cache directory [default: $XDG_CACHE_HOME/pibake].
    #[arg(long, env = "PIBAKE_CACHE_DIR", value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// What to do with the cache.
#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached images, downloads and partial downloads.
    Ls,
    /// Hash every cached file again and remove those that do not match their record.
    ///
    /// Waits until no other pibake is using the cache. Damaged downloads and images, and files a
    /// killed process left without their record, are removed (and listed); the next build
    /// fetches or decodes them again.
    Verify,
    /// Delete cached files (all of them, or those unused for some days).
    ///
    /// Waits until no other pibake is using the cache, so nothing a running build reads is
    /// removed from under it.
    Clean {
        /// Only delete what has not been used for this many days.
        #[arg(long, value_name = "DAYS")]
        older_than: Option<f64>,
    },
}

/// Run `pibake cache ...`.
pub fn run(args: &Args, ui: &super::Ui) -> anyhow::Result<()> {
    let dir = args.cache_dir.clone().unwrap_or_else(cache::default_dir);
    let progress = ui.progress.as_ref();
    let cache = match args.command {
        CacheCommand::Ls => Cache::open(&dir, progress)?,
        CacheCommand::Verify | CacheCommand::Clean { .. } => Cache::open_exclusive(&dir, progress)?,
    };
    match &args.command {
        CacheCommand::Verify => {
            let r = cache.verify(progress)?;
            for (path, why) in &r.dropped {
                println!("removed   {}: {why}", path.display());
            }
            for path in &r.unchecked {
                println!(
                    "unchecked {}: no recorded hash and its source is gone",
                    path.display()
                );
            }
            println!(
                "verified {} entries ({} read): {} good, {} removed, {} unchecked, in {}",
                r.good + r.dropped.len() + r.unchecked.len(),
                super::os::human_size(r.bytes),
                r.good,
                r.dropped.len(),
                r.unchecked.len(),
                dir.display()
            );
        }
        CacheCommand::Ls => {
            let entries = cache.list();
            println!("cache: {}", dir.display());
            if entries.is_empty() {
                println!("(empty)");
            }
            for e in entries {
                let size = super::os::human_size(e.size);
                let on_disk = match e.allocated {
                    Some(a) if a < e.size => format!(" ({} on disk)", super::os::human_size(a)),
                    _ => String::new(),
                };
                println!(
                    "{:<8}  {:>9}{on_disk}  {:>5.1} days  {}  {}",
                    e.kind,
                    size,
                    e.age_days,
                    e.path
                        .file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default(),
                    e.origin.as_deref().unwrap_or("")
                );
            }
        }
        CacheCommand::Clean { older_than } => {
            let limit = match older_than {
                Some(d) if d.is_finite() && *d >= 0.0 => Some(Duration::from_secs_f64(d * 86400.0)),
                Some(d) => {
                    return Err(super::BadInput(format!(
                        "--older-than must be a number of days >= 0, not {d}"
                    ))
                    .into());
                }
                None => None,
            };
            let r = cache.clean(limit)?;
            println!(
                "removed {} files, freed {} from {}",
                r.removed,
                super::os::human_size(r.freed),
                dir.display()
            );
        }
    }
    Ok(())
}
