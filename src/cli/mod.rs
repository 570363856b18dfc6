//! The command-line edge: argument parsing, friendly errors and exit codes.
//!
//! Each subcommand lives in its own module with an `Args` struct and a `run` function; library
//! errors are typed, and only here are they turned into messages and exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{Classify, Kind};

mod progress;

pub use progress::TermProgress;

/// Exit code for bad input (a wrong image, recipe or argument): the user can fix it.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for a failure inside pibake or the environment (I/O, bugs).
pub const EXIT_INTERNAL: u8 = 1;

#[derive(Parser)]
#[command(
    name = "pibake",
    version,
    about = "Bake ready-to-flash Raspberry Pi OS images offline: no root, no mounts, no loop devices",
    long_about = "pibake reads and edits Raspberry Pi OS images on the host, without mounting \
                  them: the FAT boot partition and the ext4 root partition are changed in place \
                  through a copy-on-write layer, so the input image is never modified.\n\n\
                  Images may be raw (.img) or compressed (.img.xz, .img.zst, .img.gz)."
)]
struct Cli {
    /// Show no progress bars or progress lines.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show an image's partitions, OS release and the facts later steps rely on.
    Inspect(inspect::Args),
    /// List a directory inside an image, e.g. `pibake ls raspios.img root:/etc`.
    Ls(files::LsArgs),
    /// Print a file inside an image, e.g. `pibake cat raspios.img root:/etc/os-release`.
    Cat(files::CatArgs),
    /// Show what `build` would do: the facts found, the stack chosen and why, every file operation.
    Plan(bake::PlanArgs),
    /// Build a configured image from a recipe and a base image, with a manifest.
    Build(bake::BuildArgs),
    /// Rebuild what a manifest describes and check the result is byte-identical.
    Verify(bake::VerifyArgs),
    /// Download, verify and decode a base image; print the path of the raw image.
    Fetch(fetch::Args),
    /// The Raspberry Pi OS list (`pibake os list`).
    Os(os::Args),
    /// The download and image cache (`pibake cache ls|verify|clean`).
    Cache(cache::Args),
    /// Write an image to a card (only mapped blocks), then read it back and compare.
    Flash(flash::Args),
    /// A whole cluster from one inventory file (`pibake cluster plan cluster.toml`).
    Cluster(cluster::Args),
}

mod bake;
pub mod cache;
mod cluster;
pub mod fetch;
mod files;
mod flash;
mod inspect;
mod open;
pub mod os;

/// Shared by every subcommand: how to report progress.
pub struct Ui {
    /// Progress sink for long steps.
    pub progress: Box<dyn crate::progress::Progress>,
}

/// Parse arguments, run the subcommand, and turn any error into a message and exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let ui = Ui {
        progress: if cli.quiet {
            Box::new(crate::progress::Silent)
        } else {
            Box::new(TermProgress::new(std::io::stderr().is_terminal()))
        },
    };
    let result = match &cli.command {
        Command::Inspect(a) => inspect::run(a, &ui),
        Command::Ls(a) => files::ls(a, &ui),
        Command::Cat(a) => files::cat(a, &ui),
        Command::Plan(a) => bake::plan(a, &ui),
        Command::Build(a) => bake::build(a, &ui),
        Command::Verify(a) => bake::verify(a, &ui),
        Command::Fetch(a) => fetch::run(a, &ui),
        Command::Os(a) => os::run(a, &ui),
        Command::Cache(a) => cache::run(a, &ui),
        Command::Flash(a) => flash::run(a, &ui),
        Command::Cluster(a) => cluster::run(a, &ui),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (kind, hint) = kind_and_hint(&e);
            eprintln!("error: {}", message(&e));
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(exit_code(kind))
        }
    }
}

/// The error and its causes on one line, without repeating a cause already in the message.
fn message(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

/// The kind and hint of an error chain: the first cause that knows its kind decides. A damaged
/// `.xz` block surfaces through whatever was reading (partition table, ext4, FAT) as an I/O
/// error; it is still the input's fault, whoever reports it, so it is looked for first.
fn kind_and_hint(e: &anyhow::Error) -> (Kind, Option<String>) {
    let hint = e.chain().find_map(|c| classify(c).and_then(|(_, h)| h));
    for cause in e.chain() {
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        let xz = cause
            .downcast_ref::<crate::xz::XzError>()
            .or_else(|| inner.and_then(|i| i.downcast_ref::<crate::xz::XzError>()));
        if let Some(xz) = xz {
            return (Classify::kind(xz), hint);
        }
    }
    for cause in e.chain() {
        if let Some((kind, _)) = classify(cause) {
            return (kind, hint);
        }
    }
    (Kind::Internal, hint)
}

/// Bad input is exit 2; anything else is exit 1.
fn exit_code(kind: Kind) -> u8 {
    match kind {
        Kind::BadInput => EXIT_BAD_INPUT,
        Kind::Environment | Kind::Internal => EXIT_INTERNAL,
    }
}

/// The kind and hint of one error in a chain, if it is one of pibake's typed errors. Every type
/// that implements [`Classify`] must be listed here: a test in `architecture.rs` fails when one
/// is not, so a new error type cannot silently become exit 1.
fn classify(cause: &(dyn std::error::Error + 'static)) -> Option<(Kind, Option<String>)> {
    macro_rules! by_kind {
        ($($t:ty),* $(,)?) => {$(
            if let Some(e) = cause.downcast_ref::<$t>() {
                return Some((Classify::kind(e), Classify::hint(e)));
            }
        )*};
    }
    by_kind!(
        crate::error::PathError,
        crate::xz::XzError,
        crate::compress::DecodeError,
        crate::disk::ImageError,
        crate::disk::partition::PartitionError,
        crate::acquire::AcquireError,
        crate::fs::FsError,
        crate::fs::edit::EditError,
        crate::overlay::OverlayError,
        crate::recipe::RecipeError,
        crate::recipe::RecipeReadError,
        crate::plan::PlanError,
        crate::apply::ApplyError,
        crate::output::OutputError,
        crate::output::bmap::BmapError,
        crate::output::flash::FlashError,
        crate::output::flash::Refusal,
        crate::bake::NoBase,
        crate::bake::BadEpoch,
        crate::bake::VerifyError,
        crate::sshkey::KeyError,
        crate::cluster::secrets::SecretsError,
        crate::cluster::pick::PickError,
        crate::cluster::verify::ClusterNode,
        BadInput,
    );
    None
}

/// A problem with what the user asked for, raised at the CLI edge.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl crate::error::Classify for BadInput {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::BadInput
    }
}
