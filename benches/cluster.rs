//! A whole cluster for the price of little more than its master: `pibake cluster build` of a
//! master and 8 workers from one multi-block `.img.xz` base to `.img.xz` outputs, beside
//! `pibake build` of the master alone, both measured in this run. Goal: at most 2x the
//! master's time, with peak RSS under 512 MiB.
//!
//! Uses `target/fixtures/full/bookworm-full.img.xz` (`make fixtures FULL=1`: 24 MiB blocks, as
//! Raspberry Pi OS ships) when present, else the small bookworm fixture in 1 MiB blocks.
//! Run with `cargo bench --bench cluster` (or `make bench`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod support;

use support::{Res, Run, measure};

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

const WORKERS: usize = 8;

fn run() -> Res<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let full = root.join("target/fixtures/full/bookworm-full.img.xz");
    let small = root.join("target/fixtures/bookworm.blocks.img.xz");
    let base = if full.is_file() { full } else { small };
    if !base.is_file() {
        println!(
            "cluster bench: {} is missing; run `make fixtures` first (FULL=1 for the full-size one)",
            base.display()
        );
        return Ok(());
    }
    let work = root.join("target/bench/cluster");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let cache = work.join("cache");
    let bin = env!("CARGO_BIN_EXE_pibake");
    let common = "[user]\nname = \"pi\"\npassword = \"bench-only\"\n";
    let master = work.join("master.toml");
    std::fs::write(
        &master,
        format!("[node]\nhostname = \"master\"\nrole = \"master\"\n{common}"),
    )?;
    let inventory = work.join("cluster.toml");
    std::fs::write(
        &inventory,
        format!(
            "[cluster]\nname = \"bench\"\n[defaults.user]\nname = \"pi\"\npassword = \"bench-only\"\n\
             [workers]\npattern = \"node{{:02}}\"\ncount = {WORKERS}\n"
        ),
    )?;
    let pibake = |args: &[&Path]| {
        let mut c = Command::new(bin);
        c.args(args)
            .env("SOURCE_DATE_EPOCH", "1735689600")
            .env("PIBAKE_CACHE_DIR", &cache)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let p = Path::new;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "base: {} ({:.0} MiB compressed), {cores} cores",
        base.display(),
        std::fs::metadata(&base)?.len() as f64 / 1048576.0
    );
    // Page cache and pibake's hash memo warm for both contenders.
    std::io::copy(&mut std::fs::File::open(&base)?, &mut std::io::sink())?;
    measure(&mut pibake(&[p("plan"), &master, p("--base"), &base]))?;

    let row = |what: &str, r: &Run| {
        println!(
            "{what:<44} {:>9.2} s {:>9.0} MiB peak RSS",
            r.time.as_secs_f64(),
            r.max_rss_mib
        );
    };
    let alone = measure(&mut pibake(&[
        p("build"),
        &master,
        p("--base"),
        &base,
        p("-o"),
        &work.join("master.img.xz"),
    ]))?;
    row("pibake build: the master alone", &alone);
    // A cluster build writes a .bmap beside every image; the like-for-like single build does too.
    let alone_bmap = measure(&mut pibake(&[
        p("build"),
        &master,
        p("--base"),
        &base,
        p("--bmap"),
        p("-o"),
        &work.join("master-bmap.img.xz"),
    ]))?;
    row("pibake build --bmap: the master alone", &alone_bmap);
    let cluster = measure(&mut pibake(&[
        p("cluster"),
        p("build"),
        &inventory,
        p("--base"),
        &base,
        p("-o"),
        &work.join("out"),
    ]))?;
    row(
        &format!("pibake cluster build: master + {WORKERS} workers"),
        &cluster,
    );
    let images = std::fs::read_dir(work.join("out"))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().to_string_lossy().ends_with(".img.xz"))
        })
        .count();
    println!();
    println!(
        "cluster: {images} images (and .bmap) in {:.2}x the time of the master alone with --bmap, \
         {:.2}x without (goal <= 2x), peak RSS {:.0} MiB (goal < 512 MiB)",
        cluster.time.as_secs_f64() / alone_bmap.time.as_secs_f64(),
        cluster.time.as_secs_f64() / alone.time.as_secs_f64(),
        cluster.max_rss_mib
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
