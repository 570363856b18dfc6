//! `pibake os list`: the choices of the Raspberry Pi OS list.

use crate::acquire::{self, AcquireOptions};

/// `pibake os ...`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: OsCommand,
}

/// What to do with the OS list.
#[derive(clap::Subcommand, Debug)]
pub enum OsCommand {
    /// Print the images of the OS list: short name, release date, size, init format and name.
    List(ListArgs),
}

/// `pibake os list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// URL (or path) of the OS list.
    #[arg(long, env = "PIBAKE_OS_LIST", value_name = "URL",
          default_value = acquire::oslist::DEFAULT_OS_LIST)]
    pub os_list: String,
    /// Also list images pibake has no short name for (other operating systems).
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run `pibake os ...`.
pub fn run(args: &Args, _ui: &super::Ui) -> anyhow::Result<()> {
    match &args.command {
        OsCommand::List(a) => list(a),
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let opts = AcquireOptions {
        os_list: args.os_list.clone(),
        ..AcquireOptions::default()
    };
    let entries: Vec<_> = acquire::os_list(&opts)?
        .into_iter()
        .filter(|e| args.all || e.short_name.is_some())
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            let short = match (&e.short_name, &e.suite) {
                (Some(s), Some(suite)) => format!("{s} ({suite})"),
                (Some(s), None) => s.clone(),
                (None, _) => "-".into(),
            };
            [
                short,
                e.release_date.clone().unwrap_or_else(|| "-".into()),
                e.size().map_or_else(|| "-".into(), human_size),
                if e.init_format.is_empty() {
                    "-".into()
                } else {
                    e.init_format.clone()
                },
                e.name.clone(),
            ]
        })
        .collect();
    let header = ["SHORT NAME", "RELEASE", "SIZE", "INIT", "NAME"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s
    };
    println!("{}", line(header));
    for r in &rows {
        println!("{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    Ok(())
}

/// `1.2 GiB`, `512 MiB`.
pub(crate) fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}
