//! Decode throughput: pibake's xz decoder beside `xz -dc -T0`, on the same file and cores.
//!
//! Uses `target/fixtures/full/bookworm-full.img.xz` (from `make fixtures FULL=1`) when present;
//! otherwise makes a ~1 GiB multi-block .xz of mixed zero, compressible and random data under
//! `target/bench/`. Run with `cargo bench --bench decode` (or `make bench`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pibake::compress::{self as decompress, Compression};

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let fixture = root.join("fixtures/full/bookworm-full.img.xz");
    let input = if fixture.is_file() {
        fixture
    } else {
        let p = root.join("bench/decode-1g.img.xz");
        if !p.is_file() {
            make_input(&p)?;
        }
        p
    };
    let compressed = std::fs::metadata(&input)?.len();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "input: {} ({:.0} MiB compressed), {cores} cores",
        input.display(),
        mib(compressed)
    );

    // Warm the page cache so both sides read from memory.
    std::io::copy(&mut File::open(&input)?, &mut std::io::sink())?;

    let out_path = root.join("bench/decode-out.img");
    let mut xz_best = Duration::MAX;
    let mut ours_best = Duration::MAX;
    let mut hashed_best = Duration::MAX;
    let mut null_best = Duration::MAX;
    let mut decoded = 0;
    for _ in 0..2 {
        let t = Instant::now();
        let status = Command::new("xz")
            .args(["-dc", "-T0"])
            .arg(&input)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("xz -dc -T0 failed: {status}").into());
        }
        xz_best = xz_best.min(t.elapsed());

        let mut out = File::create(&out_path)?;
        let t = Instant::now();
        decoded = decompress::decode_to(&input, Compression::Xz, &mut out, &mut |_| {})?;
        ours_best = ours_best.min(t.elapsed());
        drop(out);
        std::fs::remove_file(&out_path)?;

        let mut null = File::options().write(true).open("/dev/null")?;
        let t = Instant::now();
        decompress::decode_to(&input, Compression::Xz, &mut null, &mut |_| {})?;
        null_best = null_best.min(t.elapsed());

        let mut out = File::create(&out_path)?;
        let t = Instant::now();
        decompress::decode_hashed(&input, Compression::Xz, &mut out, true, &mut |_| {})?;
        hashed_best = hashed_best.min(t.elapsed());
        drop(out);
        std::fs::remove_file(&out_path)?;
    }
    let rate = |d: Duration| mib(decoded) / d.as_secs_f64();
    println!("decoded size: {:.0} MiB; best of 2 runs each", mib(decoded));
    println!("xz -dc -T0 > /dev/null        {:8.1} MiB/s", rate(xz_best));
    println!(
        "pibake decode_to /dev/null     {:8.1} MiB/s  ratio {:.2}",
        rate(null_best),
        xz_best.as_secs_f64() / null_best.as_secs_f64()
    );
    println!(
        "pibake decode_to (sparse file) {:8.1} MiB/s  ratio {:.2}",
        rate(ours_best),
        xz_best.as_secs_f64() / ours_best.as_secs_f64()
    );
    println!(
        "pibake decode + SHA-256, as for an OS-list image (CRC skipped: SHA-256 verified) {:8.1} MiB/s  ratio {:.2}",
        rate(hashed_best),
        xz_best.as_secs_f64() / hashed_best.as_secs_f64()
    );
    Ok(())
}

fn mib(n: u64) -> f64 {
    n as f64 / (1 << 20) as f64
}

/// About 1 GiB like a disk image: zero runs, compressible runs and random runs, compressed by
/// `xz` into 24 MiB blocks (as Raspberry Pi OS images are).
fn make_input(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    println!("making {} (once)...", path.display());
    let tmp = path.with_extension("partial");
    let mut child = Command::new("xz")
        .args(["-z", "-c", "-T0", "-3", "--block-size=24MiB"])
        .stdin(Stdio::piped())
        .stdout(File::create(&tmp)?)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = vec![0u8; 1 << 20];
    let words = [
        &b"usr/lib/aarch64-linux-gnu "[..],
        b"systemd ",
        b"\x7fELF\x02\x01\x01\0",
        b"Raspberry Pi ",
        b"0123456789abcdef",
    ];
    for i in 0..1024u32 {
        match i % 10 {
            0..=3 => chunk.fill(0),
            4..=6 => {
                let mut pos = 0;
                while pos < chunk.len() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let w = words[(x % words.len() as u64) as usize];
                    let n = w.len().min(chunk.len() - pos);
                    chunk[pos..pos + n].copy_from_slice(&w[..n]);
                    pos += n;
                }
            }
            _ => {
                for b in chunk.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
                }
            }
        }
        stdin.write_all(&chunk)?;
    }
    drop(stdin);
    if !child.wait()?.success() {
        return Err("xz failed".into());
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
