//! The command-line edge: argument parsing, friendly errors and exit codes.
//!
//! Each subcommand lives in its own module with an `Args` struct and a `run` function; library
//! errors are typed, and only here are they turned into messages and exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// The download and image cache (`pibake cache ls|clean`).
    Cache(cache::Args),
    /// Write an image to a card (only mapped blocks), then read it back and compare.
    Flash(flash::Args),
}

mod bake;
pub mod cache;
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(exit_code(&e))
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

/// Bad input is exit 2; anything else is exit 1. The first cause in the chain that knows which
/// it is decides.
fn exit_code(e: &anyhow::Error) -> u8 {
    // A damaged .xz block surfaces through whatever was reading (partition table, ext4, FAT) as
    // an I/O error; it is still the input's fault, whoever reports it.
    for cause in e.chain() {
        let xz = cause.downcast_ref::<crate::disk::XzError>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<crate::disk::XzError>())
        });
        if let Some(xz) = xz {
            return if xz.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_INTERNAL
            };
        }
    }
    for cause in e.chain() {
        if let Some(bad) = classify(cause) {
            return if bad { EXIT_BAD_INPUT } else { EXIT_INTERNAL };
        }
    }
    EXIT_INTERNAL
}

/// Whether one error in a chain is the user's input (Some(true)), pibake's (Some(false)), or
/// says nothing either way (None).
fn classify(cause: &(dyn std::error::Error + 'static)) -> Option<bool> {
    macro_rules! by_method {
        ($($t:ty),*) => {$(
            if let Some(e) = cause.downcast_ref::<$t>() {
                return Some(
                    crate::error::Classify::kind(e) == crate::error::Kind::BadInput,
                );
            }
        )*};
    }
    by_method!(
        crate::disk::ImageError,
        crate::fs::FsError,
        crate::plan::PlanError,
        crate::apply::ApplyError,
        crate::overlay::OverlayError,
        crate::acquire::AcquireError,
        crate::compress::DecodeError,
        crate::output::flash::FlashError,
        crate::output::OutputError,
        crate::output::bmap::BmapError
    );
    let always_bad = cause.is::<BadInput>()
        || cause.is::<crate::recipe::RecipeError>()
        || cause.is::<crate::recipe::RecipeReadError>()
        || cause.is::<crate::bake::NoBase>()
        || cause.is::<crate::bake::VerifyError>();
    always_bad.then_some(true)
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
