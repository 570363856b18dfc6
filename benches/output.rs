//! Output speed: pibake's `.img.xz` and `.img.zst` writers beside `xz -T0 -6` and `zstd -T0` on
//! the same raw image in the same run, the sparse raw writer, and how many bytes `flash` writes
//! compared with the image size.
//!
//! Uses `target/fixtures/full/bookworm-full.img.xz` (from `make fixtures FULL=1`), decoded once
//! to `target/bench/`, when present; otherwise builds a ~1 GiB Raspberry Pi OS-shaped image
//! (FAT boot, ext4 root holding ~400 MiB of mixed compressible and incompressible files) under
//! `target/bench/`. Run with `cargo bench --bench output` (or `make bench`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pibake::disk::Image;
use pibake::output::{self, bmap, flash};
use pibake::progress::Silent;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let bench = target.join("bench");
    std::fs::create_dir_all(&bench)?;
    let fixture = target.join("fixtures/full/bookworm-full.img.xz");
    let raw = if fixture.is_file() {
        let raw = bench.join("bookworm-full.img");
        if !raw.is_file() {
            println!("decoding {} once", fixture.display());
            let out = File::create(bench.join("bookworm-full.img.partial"))?;
            check(
                Command::new("xz")
                    .args(["-dc", "-T0"])
                    .arg(&fixture)
                    .stdout(out),
            )?;
            std::fs::rename(bench.join("bookworm-full.img.partial"), &raw)?;
        }
        raw
    } else {
        let raw = bench.join("synthetic-1g.img");
        if !raw.is_file() {
            println!("building a synthetic ~1 GiB image (no full fixture found)");
            synthetic(&bench, &raw)?;
        }
        raw
    };
    let image = Image::open(&raw)?;
    let len = image.disk.len();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "input: {} ({:.0} MiB raw), {cores} cores",
        raw.display(),
        mib(len)
    );
    // Warm the page cache so every contender reads from memory.
    std::io::copy(&mut File::open(&raw)?, &mut std::io::sink())?;

    println!(
        "\n{:<28} {:>9} {:>11} {:>9}",
        "output", "seconds", "MiB", "MiB/s in"
    );
    let row = |what: &str, t: Duration, bytes: u64| {
        println!(
            "{what:<28} {:>9.2} {:>11.1} {:>9.1}",
            t.as_secs_f64(),
            mib(bytes),
            mib(len) / t.as_secs_f64()
        );
    };

    let t = Instant::now();
    let w = output::write(&image.disk, &bench.join("out.img"), &Silent)?;
    row("pibake .img (sparse)", t.elapsed(), w.bytes);

    let t = Instant::now();
    let ours_zst = output::write(&image.disk, &bench.join("out.img.zst"), &Silent)?;
    let ours_zst_t = t.elapsed();
    row("pibake .img.zst", ours_zst_t, ours_zst.bytes);
    let cli_zst = bench.join("cli.img.zst");
    let t = Instant::now();
    check(
        Command::new("zstd")
            .args(["-T0", "-q", "-c"])
            .arg(&raw)
            .stdout(File::create(&cli_zst)?),
    )?;
    let cli_zst_t = t.elapsed();
    row("zstd -T0", cli_zst_t, std::fs::metadata(&cli_zst)?.len());

    println!(
        "time ratio pibake/tool: zstd {:.2}   size ratio pibake/tool: zstd {:.3}",
        ours_zst_t.as_secs_f64() / cli_zst_t.as_secs_f64(),
        ours_zst.bytes as f64 / std::fs::metadata(&cli_zst)?.len() as f64,
    );
    // Flash to a regular file standing in for a card.
    let t = Instant::now();
    let ranges = flash::ranges_for(&image, None)?;
    let map_t = t.elapsed();
    let card = bench.join("card.bin");
    let _ = std::fs::remove_file(&card);
    File::create(&card)?;
    let host = flash::Host::current();
    let (mut dev, _) = flash::open_target(&card, len, false, &host)?;
    let t = Instant::now();
    let report = flash::flash(&image.disk, &mut dev, &ranges, &Silent)?;
    let flash_t = t.elapsed();
    println!(
        "\nflash: wrote {:.1} MiB of {:.1} MiB ({:.1}%) in {} ranges, {} writes; mapping {:.2}s, write+sync+verify {:.2}s",
        mib(report.written_bytes),
        mib(report.image_bytes),
        report.written_bytes as f64 * 100.0 / report.image_bytes as f64,
        report.ranges,
        report.writes,
        map_t.as_secs_f64(),
        flash_t.as_secs_f64()
    );
    let bmap_path = bench.join("out.img.xz.bmap");
    let plain: Vec<_> = ranges.iter().map(|r| r.bytes.clone()).collect();
    let b = bmap::write(&image.disk, &plain, &bmap_path, &Silent)?;
    println!("bmap: {} of {} blocks mapped", b.mapped_blocks, b.blocks);

    let t = Instant::now();
    let ours_xz = output::write(&image.disk, &bench.join("out.img.xz"), &Silent)?;
    let ours_xz_t = t.elapsed();
    row("pibake .img.xz", ours_xz_t, ours_xz.bytes);
    let cli_xz = bench.join("cli.img.xz");
    let t = Instant::now();
    check(
        Command::new("xz")
            .args(["-T0", "-6", "-c"])
            .arg(&raw)
            .stdout(File::create(&cli_xz)?),
    )?;
    let cli_xz_t = t.elapsed();
    row("xz -T0 -6", cli_xz_t, std::fs::metadata(&cli_xz)?.len());

    println!(
        "time ratio pibake/tool: xz {:.2}   size ratio pibake/tool: xz {:.3}",
        ours_xz_t.as_secs_f64() / cli_xz_t.as_secs_f64(),
        ours_xz.bytes as f64 / std::fs::metadata(&cli_xz)?.len() as f64,
    );

    for p in ["out.img", "card.bin", "cli.img.xz", "cli.img.zst"] {
        let _ = std::fs::remove_file(bench.join(p));
    }
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn check(cmd: &mut Command) -> Res<()> {
    let status = cmd.stderr(Stdio::inherit()).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}").into())
    }
}

fn run_tool(cmd: &str, args: &[&str]) -> Res<()> {
    check(Command::new(cmd).args(args).stdout(Stdio::null()))
}

/// A ~1 GiB MBR image: 256 MiB FAT32 boot with a few files, ext4 root with ~400 MiB of files
/// (half text-like, a quarter random, a quarter zero-heavy), some free space holding deleted data.
fn synthetic(dir: &Path, out: &Path) -> Res<()> {
    const MIB: u64 = 1 << 20;
    let staging = dir.join("synthetic.staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("boot"))?;
    std::fs::create_dir_all(staging.join("root/usr/lib"))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = [
        "systemd",
        "network",
        "config",
        "kernel",
        "module",
        "firmware",
        "library",
        "debian",
        "raspberry",
        "package",
        "usr/lib",
        "share",
        "locale",
        "\n",
        " ",
        "=",
        "0x",
    ];
    for i in 0..200 {
        let mut data = Vec::with_capacity(2 * MIB as usize);
        while data.len() < 2 * MIB as usize {
            match i % 4 {
                0 | 1 => {
                    data.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes())
                }
                2 => data.extend_from_slice(&next().to_le_bytes()),
                _ => {
                    if next() % 8 == 0 {
                        data.extend_from_slice(&next().to_le_bytes());
                    } else {
                        data.extend_from_slice(&[0u8; 64]);
                    }
                }
            }
        }
        data.truncate(2 * MIB as usize);
        File::create(staging.join(format!("root/usr/lib/lib{i}.so")))?.write_all(&data)?;
        if i < 8 {
            File::create(staging.join(format!("boot/blob{i}.bin")))?.write_all(&data)?;
        }
    }
    let tmp = dir.join("synthetic.partial");
    let boot_start = 8 * MIB;
    let boot_len = 256 * MIB;
    let root_start = boot_start + boot_len;
    let root_len = 1024 * MIB - root_start;
    File::create(&tmp)?.set_len(root_start + root_len)?;
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = sfdisk.stdin.take() {
        writeln!(
            stdin,
            "label: dos\nlabel-id: 0x5452574b\nstart={}, size={}, type=c\nstart={}, size={}, type=83",
            boot_start / 512,
            boot_len / 512,
            root_start / 512,
            root_len / 512
        )?;
    }
    if !sfdisk.wait()?.success() {
        return Err("sfdisk failed".into());
    }
    let img = tmp.to_str().ok_or("non-UTF-8 path")?;
    run_tool(
        "mkfs.vfat",
        &[
            "-F",
            "32",
            "-s",
            "4",
            "-n",
            "bootfs",
            "-i",
            "12345678",
            "--offset",
            &(boot_start / 512).to_string(),
            img,
            &(boot_len / 1024).to_string(),
        ],
    )?;
    for i in 0..8 {
        let f = staging.join(format!("boot/blob{i}.bin"));
        check(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(format!("{img}@@{boot_start}"))
                .arg(&f)
                .arg(format!("::blob{i}.bin"))
                .stdout(Stdio::null()),
        )?;
    }
    run_tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "rootfs",
            "-O",
            "^64bit,^huge_file",
            "-b",
            "4096",
            "-E",
            &format!("offset={root_start}"),
            "-d",
            staging.join("root").to_str().ok_or("non-UTF-8 path")?,
            img,
            &format!("{}k", root_len / 1024),
        ],
    )?;
    std::fs::remove_dir_all(&staging)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}
