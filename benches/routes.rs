//! Work proportional to the change: pibake's build routes from an `.img.xz` base, each beside
//! the reference it must beat, all measured in this run on the full-size fixture.
//!
//! - `.img.xz` → `.img.xz` (patch route) vs `xz -dc -T0 base | xz -T0 -6` (the edit itself left
//!   out of the reference, which only makes the reference faster). Goal: ≥ 20× faster.
//! - `.img.xz` → `.img`, cold cache, vs `xz -dc -T0 base > /dev/null`. Goal: ≤ 1.15× its time.
//! - The same build again, warm cache. Goal: under 2 s. Shown beside `cp --sparse=always` of the
//!   cold output plus `sync`: without reflinks the warm build copies as much data, and syncs it.
//! - Peak RSS of every pibake run (from `wait4`). Goal: under 256 MiB plus decoder buffers.
//!
//! Needs `target/fixtures/full/bookworm-full.img.xz` (`make fixtures FULL=1`). The reference
//! encode takes as long as compressing 2.9 GB with xz; `PIBAKE_BENCH_SKIP_ENCODE=1` skips it.
//! Run with `cargo bench --bench routes` (or `make bench`).

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

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).stdout(Stdio::null());
    c
}

fn run() -> Res<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let base = root.join("target/fixtures/full/bookworm-full.img.xz");
    if !base.is_file() {
        println!(
            "routes bench: {} is missing; run `make fixtures FULL=1` first",
            base.display()
        );
        return Ok(());
    }
    let work = root.join("target/bench/routes");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let recipe = work.join("master.toml");
    std::fs::write(
        &recipe,
        "[node]\nhostname = \"bench\"\n[user]\nname = \"pi\"\npassword = \"bench-only\"\n",
    )?;
    let cache = work.join("cache");
    let bin = env!("CARGO_BIN_EXE_pibake");
    let build = |out: &Path| {
        let mut c = Command::new(bin);
        c.args(["build", "--quiet"])
            .arg(&recipe)
            .arg("--base")
            .arg(&base)
            .arg("-o")
            .arg(out)
            .env("SOURCE_DATE_EPOCH", "1735689600")
            .env("PIBAKE_CACHE_DIR", &cache)
            .stderr(Stdio::null());
        c
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let xz_len = std::fs::metadata(&base)?.len();
    println!(
        "base: {} ({:.0} MiB compressed), {cores} cores",
        base.display(),
        xz_len as f64 / 1048576.0
    );
    // Warm the page cache for everyone, and let pibake hash (and remember) the base once so no
    // contender pays for reading it from disk.
    std::io::copy(&mut std::fs::File::open(&base)?, &mut std::io::sink())?;

    let q = |p: &Path| format!("'{}'", p.display());
    let decode = measure(&mut sh(&format!("xz -dc -T0 {} > /dev/null", q(&base))))?;
    let row = |what: &str, r: &Run| {
        println!(
            "{what:<44} {:>9.2} s {:>9.0} MiB peak RSS",
            r.time.as_secs_f64(),
            r.max_rss_mib
        );
    };
    println!();
    row("xz -dc -T0 base > /dev/null", &decode);

    let patch = measure(&mut build(&work.join("out.img.xz")))?;
    row("pibake .img.xz -> .img.xz (patch)", &patch);
    let cold = measure(&mut build(&work.join("cold.img")))?;
    row("pibake .img.xz -> .img (cold cache)", &cold);
    // The cold build leaves gigabytes of dirty pages; a later rebuild does not pay for them.
    measure(&mut sh("sync"))?;
    let warm = measure(&mut build(&work.join("warm.img")))?;
    row("pibake .img.xz -> .img (warm cache)", &warm);
    // What the warm build cannot beat without reflinks: copying the image's data and syncing it.
    measure(&mut sh("sync"))?;
    let copy = measure(&mut sh(&format!(
        "cp --sparse=always {} {} && sync {}",
        q(&work.join("cold.img")),
        q(&work.join("cp.img")),
        q(&work.join("cp.img"))
    )))?;
    row("cp --sparse=always cold.img + sync", &copy);

    let reference = if std::env::var_os("PIBAKE_BENCH_SKIP_ENCODE").is_some() {
        None
    } else {
        let r = measure(&mut sh(&format!(
            "xz -dc -T0 {} | xz -T0 -6 > /dev/null",
            q(&base)
        )))?;
        row("xz -dc -T0 base | xz -T0 -6 (reference)", &r);
        Some(r)
    };

    println!();
    match reference {
        Some(r) => println!(
            "patch route: {:.1}x faster than the reference pipeline (goal >= 20x)",
            r.time.as_secs_f64() / patch.time.as_secs_f64()
        ),
        None => println!("patch route: reference encode skipped (PIBAKE_BENCH_SKIP_ENCODE)"),
    }
    println!(
        "cold raw: {:.2}x the time of xz -dc -T0 (goal <= 1.15x)",
        cold.time.as_secs_f64() / decode.time.as_secs_f64()
    );
    println!(
        "warm raw: {:.2} s (goal < 2 s), {:.2}x the time of cp + sync",
        warm.time.as_secs_f64(),
        warm.time.as_secs_f64() / copy.time.as_secs_f64()
    );
    println!(
        "peak RSS: patch {:.0} MiB, cold {:.0} MiB, warm {:.0} MiB (goal < 256 MiB + decoder buffers)",
        patch.max_rss_mib, cold.max_rss_mib, warm.max_rss_mib
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
