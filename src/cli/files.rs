//! `pibake ls` and `pibake cat`: read-only looks inside an image's partitions.

use std::io::Write;
use std::path::PathBuf;

use super::{BadInput, Ui, open};
use crate::disk::Image;
use crate::fs::{Entry, FileOps, Kind, Stat};

/// Arguments of `pibake ls`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pibake ls raspios.img root:/etc/systemd/system\n  pibake ls raspios.img.xz boot:/"
)]
pub struct LsArgs {
    /// Image to read (raw or compressed); never modified.
    pub image: PathBuf,
    /// `boot:PATH` or `root:PATH`, PATH absolute inside that partition.
    pub target: String,
    /// Print JSON instead of a listing.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `pibake cat`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  pibake cat raspios.img root:/etc/os-release\n  pibake cat raspios.img boot:/cmdline.txt"
)]
pub struct CatArgs {
    /// Image to read (raw or compressed); never modified.
    pub image: PathBuf,
    /// `boot:PATH` or `root:PATH`, PATH absolute inside that partition.
    pub target: String,
}

/// Which partition a `PART:PATH` argument names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The FAT boot partition.
    Boot,
    /// The ext4 root partition.
    Root,
}

/// Split `PART:PATH`.
pub fn parse_target(s: &str) -> Result<(Part, &str), BadInput> {
    let bad = || {
        BadInput(format!(
            "{s:?}: expected PART:PATH, where PART is `boot` or `root` and PATH is absolute (e.g. root:/etc/os-release)"
        ))
    };
    let (part, path) = s.split_once(':').ok_or_else(bad)?;
    let part = match part {
        "boot" => Part::Boot,
        "root" => Part::Root,
        _ => return Err(bad()),
    };
    if !path.starts_with('/') {
        return Err(bad());
    }
    Ok((part, path))
}

fn filesystem(image: &Image, part: Part) -> anyhow::Result<Box<dyn FileOps>> {
    Ok(match part {
        Part::Boot => Box::new(open::boot(image)?),
        Part::Root => Box::new(open::root(image)?),
    })
}

fn mode_string(st: &Stat) -> String {
    let kind = match st.kind {
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::File => '-',
        Kind::Other => '?',
    };
    let m = st.mode;
    let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char, unset: char| match (m & x != 0, m & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// Run `pibake ls`.
pub fn ls(args: &LsArgs, ui: &Ui) -> anyhow::Result<()> {
    let (part, path) = parse_target(&args.target)?;
    let image = open::image(&args.image, ui)?;
    let mut fs = filesystem(&image, part)?;
    let st = fs.stat(path)?;
    let is_dir = st.kind == Kind::Dir || (st.kind == Kind::Symlink && fs.list(path).is_ok());
    let mut entries: Vec<(Entry, Option<String>)> = Vec::new();
    if is_dir {
        for e in fs.list(path)? {
            let target = if e.stat.kind == Kind::Symlink {
                let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
                Some(fs.read_link(&child)?)
            } else {
                None
            };
            entries.push((e, target));
        }
    } else {
        let target = if st.kind == Kind::Symlink {
            Some(fs.read_link(path)?)
        } else {
            None
        };
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        entries.push((Entry { name, stat: st }, target));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let v: Vec<_> = entries
            .iter()
            .map(|(e, t)| serde_json::json!({"name": e.name, "stat": e.stat, "target": t}))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    for (e, target) in entries {
        let arrow = target.map(|t| format!(" -> {t}")).unwrap_or_default();
        writeln!(
            out,
            "{} {:>5} {:>5} {:>10} {}{}",
            mode_string(&e.stat),
            e.stat.uid,
            e.stat.gid,
            e.stat.size,
            e.name,
            arrow
        )?;
    }
    Ok(())
}

/// Run `pibake cat`.
pub fn cat(args: &CatArgs, ui: &Ui) -> anyhow::Result<()> {
    let (part, path) = parse_target(&args.target)?;
    let image = open::image(&args.image, ui)?;
    let mut fs = filesystem(&image, part)?;
    let data = fs.read(path)?;
    let mut out = std::io::stdout().lock();
    match out.write_all(&data).and_then(|_| out.flush()) {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_modes() {
        assert_eq!(parse_target("root:/etc").unwrap(), (Part::Root, "/etc"));
        assert!(parse_target("/etc").is_err());
        assert!(parse_target("home:/x").is_err());
        assert!(parse_target("boot:x").is_err());
        let st = |kind, mode| Stat {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            nlink: 1,
        };
        assert_eq!(mode_string(&st(Kind::File, 0o4755)), "-rwsr-xr-x");
        assert_eq!(mode_string(&st(Kind::Dir, 0o1777)), "drwxrwxrwt");
        assert_eq!(mode_string(&st(Kind::Symlink, 0o777)), "lrwxrwxrwx");
        assert_eq!(mode_string(&st(Kind::File, 0o2640)), "-rw-r-S---");
    }
}
