//! `pibake fetch`: download, verify and decode a base image, and print the raw image's path.
//!
//! [`BaseArgs`] holds the options of every command that takes a base; flatten it into their
//! `Args` and call [`BaseArgs::options`].

use std::path::PathBuf;
use std::time::Duration;

use crate::acquire::{self, AcquireOptions};

/// Where bases come from and how they are checked (shared by every command that takes a base).
#[derive(clap::Args, Debug, Clone)]
pub struct BaseArgs {
    /// URL (or path) of the OS list to choose from.
    #[arg(long, env = "PIBAKE_OS_LIST", value_name = "URL",
          default_value = acquire::oslist::DEFAULT_OS_LIST)]
    pub os_list: String,
    /// Cache directory [default: $XDG_CACHE_HOME/pibake].
    #[arg(long, env = "PIBAKE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Expected SHA-256 of the download (for a URL without a .sha256 file) or local file.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Accept a URL download that nothing verifies (no .sha256 beside it and no --sha256).
    #[arg(long)]
    pub insecure_no_verify: bool,
    /// Check the detached OpenPGP signature (URL.sig) with this public key.
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Retries after a transient network failure.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,
}

impl BaseArgs {
    /// The acquire options these arguments describe.
    pub fn options(&self) -> AcquireOptions {
        let mut o = AcquireOptions {
            os_list: self.os_list.clone(),
            sha256: self.sha256.clone(),
            insecure_no_verify: self.insecure_no_verify,
            signing_key: self.signing_key.clone(),
            retries: self.retries,
            ..AcquireOptions::default()
        };
        if let Some(d) = &self.cache_dir {
            o.cache_dir = d.clone();
        }
        if let Some(ms) = std::env::var("PIBAKE_RETRY_BACKOFF_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            // For tests and impatient CI: the first wait before a retry, in milliseconds.
            o.backoff = Duration::from_millis(ms);
        }
        o
    }
}

/// `pibake fetch [SOURCE]`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base: an OS-list name (lite-arm64, lite-armhf, desktop-arm64, full-arm64, an exact
    /// name, optionally @YYYY-MM-DD), an http(s) URL, or a local .img/.xz/.gz/.zst/.zip file.
    #[arg(default_value = acquire::source::DEFAULT_OS, value_name = "SOURCE")]
    pub source: String,
    #[command(flatten)]
    pub base: BaseArgs,
    /// Print everything known about the base (paths, checksums, verification) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Acquire the base and print the path of its raw image (or the JSON record).
pub fn run(args: &Args, ui: &super::Ui) -> anyhow::Result<()> {
    let acquired = acquire::resolve(&args.source, &args.base.options(), ui.progress.as_ref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&acquired)?);
    } else {
        println!("{}", acquired.image.display());
    }
    Ok(())
}
