//! Flashing: only mapped blocks are written, what is written is read back and compared, short
//! writes and corrupt read-backs are caught with the offset, and devices that must not be
//! written are refused — all against regular files and a made-up sysfs, never a real disk.

use crate::output_common;

use std::fs::File;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use output_common::{Layout, MIB, Shape, extract, make_image, scratch};
use pibake::disk::Image;
use pibake::output::bmap::{self, MappedRange};
use pibake::output::flash::{
    self, DeviceTarget, FlashError, Host, Refusal, Target, safety::check_block_device,
};
use pibake::progress::Silent;

fn image(dir: &Path) -> (Layout, Image) {
    let layout = make_image(dir, "base.img", Shape::default());
    let img = Image::open(&layout.image).unwrap();
    (layout, img)
}

fn host(sys: &Path) -> Host {
    Host {
        sys: sys.join("sys"),
        mountinfo: sys.join("mountinfo"),
        swaps: sys.join("swaps"),
        root_dev: None,
    }
}

fn card(dir: &Path, name: &str, len: u64, fill: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![fill; len as usize]).unwrap();
    p
}

fn same_in_ranges(a: &Path, b: &Path, ranges: &[MappedRange]) -> bool {
    let a = std::fs::read(a).unwrap();
    let b = std::fs::read(b).unwrap();
    ranges.iter().all(|r| {
        let (s, e) = (r.bytes.start as usize, r.bytes.end as usize);
        a[s..e] == b[s..e]
    })
}

#[test]
fn only_mapped_blocks_are_written_and_the_card_is_sound() {
    let dir = scratch("flash-ok");
    let (layout, img) = image(dir.path());
    let ranges = flash::ranges_for(&img, None).unwrap();
    // A used card: every byte 0xff before flashing.
    let dev = card(dir.path(), "card.bin", img.disk.len() + MIB, 0xff);
    let (mut target, info) =
        flash::open_target(&dev, img.disk.len(), false, &host(dir.path())).unwrap();
    assert_eq!(info.kind, flash::TargetKind::File);
    let report = flash::flash(&img.disk, &mut target, &ranges, &Silent).unwrap();
    assert_eq!(report.image_bytes, img.disk.len());
    assert!(report.written_bytes < report.image_bytes / 2, "{report:?}");
    assert_eq!(report.verified_bytes, report.written_bytes);
    // Large writes: on average well over a MiB per call is not possible with small ranges, but
    // no range is split below the chunk size except at its ends.
    assert!(report.writes <= ranges.len() as u64 + report.written_bytes / flash::CHUNK + 1);
    drop(target);
    assert!(same_in_ranges(&dev, &layout.image, &ranges));
    // The old card's 0xff survives in free blocks, and the filesystems do not care.
    let bytes = std::fs::read(&dev).unwrap();
    assert!(bytes.chunks(4096).any(|c| c.iter().all(|&b| b == 0xff)));
    let part = dir.path().join("root.part");
    extract(&dev, layout.root.0, layout.root.1, &part);
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(&part)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let boot = dir.path().join("boot.part");
    extract(&dev, layout.boot.0, layout.boot.1, &boot);
    let o = Command::new("fsck.vfat")
        .arg("-n")
        .arg(&boot)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn a_bmap_that_does_not_match_the_image_is_refused() {
    let dir = scratch("flash-bmap");
    let (_, img) = image(dir.path());
    let ranges = bmap::mapped_ranges(&img).unwrap();
    let p = dir.path().join("x.bmap");
    bmap::write(&img.disk, &ranges, &p, &Silent).unwrap();
    let mut from_bmap = flash::ranges_for(&img, Some(&p)).unwrap();
    assert!(from_bmap.iter().all(|r| r.sha256.is_some()));
    from_bmap[1].sha256 = Some("00".repeat(32));
    let dev = card(dir.path(), "card.bin", 0, 0);
    let (mut target, _) =
        flash::open_target(&dev, img.disk.len(), false, &host(dir.path())).unwrap();
    let err = flash::flash(&img.disk, &mut target, &from_bmap, &Silent).unwrap_err();
    assert!(matches!(err, FlashError::ImageMismatch { .. }), "{err}");
    assert!(err.is_bad_input());
}

/// A file standing in for a card, with one injected fault.
struct Faulty {
    inner: DeviceTarget,
    fault: Fault,
}

enum Fault {
    /// Every write takes at most this many bytes (legal, must be resumed).
    Dribble(usize),
    /// Writes at or after this offset take nothing (a full or vanished device).
    StopAt(u64),
    /// The write covering this offset claims success and writes nothing.
    Lose(u64),
    /// Reading back flips the byte at this offset.
    Corrupt(u64),
}

impl Target for Faulty {
    fn size(&mut self) -> io::Result<u64> {
        self.inner.size()
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<usize> {
        let end = offset + data.len() as u64;
        match self.fault {
            Fault::Dribble(max) => self.inner.write_at(offset, &data[..data.len().min(max)]),
            Fault::StopAt(at) if end > at => {
                let n = at.saturating_sub(offset) as usize;
                if n == 0 {
                    Ok(0)
                } else {
                    self.inner.write_at(offset, &data[..n])
                }
            }
            Fault::Lose(at) if (offset..end).contains(&at) => Ok(data.len()),
            _ => self.inner.write_at(offset, data),
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)?;
        if let Fault::Corrupt(at) = self.fault
            && (offset..offset + buf.len() as u64).contains(&at)
        {
            buf[(at - offset) as usize] ^= 0x40;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }

    fn prepare(&mut self, image_len: u64) -> io::Result<()> {
        self.inner.prepare(image_len)
    }
}

fn faulty(dev: &Path, fault: Fault) -> Faulty {
    let f = File::options().read(true).write(true).open(dev).unwrap();
    Faulty {
        inner: DeviceTarget::from_file(f),
        fault,
    }
}

#[test]
fn injected_faults_are_caught_with_their_offset() {
    let dir = scratch("flash-faults");
    let (layout, img) = image(dir.path());
    let ranges = flash::ranges_for(&img, None).unwrap();
    let len = img.disk.len();
    // An offset inside the root filesystem's data that is mapped and not zero.
    let raw = std::fs::read(&layout.image).unwrap();
    let inside = ranges
        .iter()
        .flat_map(|r| (r.bytes.start..r.bytes.end).step_by(4096))
        .find(|&o| o > layout.root.0 + 4 * MIB && raw[o as usize + 100] != 0)
        .unwrap()
        + 100;

    // Short writes that make progress are resumed and the result verifies.
    let dev = card(dir.path(), "dribble.bin", len, 0);
    let mut t = faulty(&dev, Fault::Dribble(100_000));
    let report = flash::flash(&img.disk, &mut t, &ranges, &Silent).unwrap();
    assert!(report.writes > ranges.len() as u64);
    assert!(same_in_ranges(&dev, &layout.image, &ranges));

    // A device that stops taking data is a short write at the offset of that write.
    let dev = card(dir.path(), "full.bin", len, 0);
    let mut t = faulty(&dev, Fault::StopAt(inside));
    let err = flash::flash(&img.disk, &mut t, &ranges, &Silent).unwrap_err();
    match &err {
        FlashError::ShortWrite {
            offset,
            wanted,
            written,
        } => {
            assert_eq!(offset + *written as u64, inside);
            assert!(written < wanted);
        }
        other => panic!("expected a short write, got {other}"),
    }
    assert!(!err.is_bad_input());

    // A write the device silently dropped is found on read-back, at its first differing byte.
    let dev = card(dir.path(), "lost.bin", len, 0);
    let mut t = faulty(&dev, Fault::Lose(inside));
    let err = flash::flash(&img.disk, &mut t, &ranges, &Silent).unwrap_err();
    let FlashError::VerifyFailed { offset, start, end } = err else {
        panic!("expected a verify failure, got {err}");
    };
    let chunk_start = inside / flash::CHUNK * flash::CHUNK;
    let first_nonzero = (chunk_start.max(start)..end)
        .find(|&o| raw[o as usize] != 0)
        .unwrap();
    assert_eq!(offset, first_nonzero);
    assert!((start..end).contains(&inside));

    // A corrupt read-back names exactly the corrupted byte; exit code 1, not 2.
    let dev = card(dir.path(), "corrupt.bin", len, 0);
    let mut t = faulty(&dev, Fault::Corrupt(inside));
    let err = flash::flash(&img.disk, &mut t, &ranges, &Silent).unwrap_err();
    assert!(
        matches!(err, FlashError::VerifyFailed { offset, .. } if offset == inside),
        "{err}"
    );
    assert!(!err.is_bad_input());
    assert!(err.to_string().contains(&inside.to_string()));
}

/// A made-up machine: sda (fixed, holds /), sdb (USB card reader, two partitions), sdc (fixed),
/// mmcblk0 (built-in SD slot: not flagged removable, type SD), dm-0 (on sdc2).
fn fake_sys(root: &Path) {
    let sys = root.join("sys");
    let dev = |p: &Path, name: &str, num: &str, extra: &[(&str, &str)]| {
        let d = p.join(name);
        std::fs::create_dir_all(d.join("holders")).unwrap();
        std::fs::write(d.join("dev"), format!("{num}\n")).unwrap();
        for (f, v) in extra {
            if let Some(parent) = Path::new(f).parent() {
                std::fs::create_dir_all(d.join(parent)).unwrap();
            }
            std::fs::write(d.join(f), format!("{v}\n")).unwrap();
        }
        let link = sys.join("dev/block").join(num);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(&d, link).unwrap();
        let class = sys.join("class/block").join(name);
        std::fs::create_dir_all(class.parent().unwrap()).unwrap();
        symlink(&d, class).unwrap();
        d
    };
    let scsi = sys.join("devices/pci0000:00/ata1/block");
    let usb = sys.join("devices/pci0000:00/usb1/1-1/block");
    let mmc = sys.join("devices/platform/mmc0/block");
    let sda = dev(
        &scsi,
        "sda",
        "8:0",
        &[("removable", "0"), ("size", "500000000")],
    );
    dev(&sda, "sda1", "8:1", &[("partition", "1")]);
    let sdb = dev(
        &usb,
        "sdb",
        "8:16",
        &[
            ("removable", "1"),
            ("size", "62333952"),
            ("device/vendor", "Generic"),
            ("device/model", "SD Reader"),
        ],
    );
    dev(&sdb, "sdb1", "8:17", &[("partition", "1")]);
    dev(&sdb, "sdb2", "8:18", &[("partition", "2")]);
    let sdc = dev(
        &scsi,
        "sdc",
        "8:32",
        &[("removable", "0"), ("size", "1000")],
    );
    let sdc2 = dev(&sdc, "sdc2", "8:34", &[("partition", "2")]);
    let mmc0 = dev(
        &mmc,
        "mmcblk0",
        "179:0",
        &[
            ("removable", "0"),
            ("device/type", "SD"),
            ("device/name", "SC32G"),
        ],
    );
    dev(&mmc0, "mmcblk0p1", "179:1", &[("partition", "1")]);
    let dm = dev(&sys.join("devices/virtual/block"), "dm-0", "253:0", &[]);
    std::fs::create_dir_all(dm.join("slaves")).unwrap();
    symlink(&sdc2, dm.join("slaves/sdc2")).unwrap();
    std::fs::write(root.join("swaps"), "Filename\tType\tSize\tUsed\tPriority\n").unwrap();
    std::fs::write(
        root.join("mountinfo"),
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
         23 22 0:21 / /proc rw - proc proc rw\n",
    )
    .unwrap();
}

#[test]
fn unsafe_devices_are_refused() {
    let dir = scratch("flash-safety");
    let root = dir.path();
    fake_sys(root);
    let mut h = host(root);
    h.root_dev = Some((8, 1));

    // A card in a USB reader passes, described by vendor, model and size.
    let ok = check_block_device((8, 16), &h, false).unwrap();
    assert_eq!(ok.name, "sdb");
    assert!(ok.description.contains("SD Reader") && ok.description.contains("31.9 GB"));
    assert!(ok.overridden.is_empty());
    // A built-in SD slot passes although the kernel does not flag it removable.
    assert!(check_block_device((179, 0), &h, false).is_ok());

    // A partition is refused even with --force.
    for force in [false, true] {
        let e = check_block_device((8, 17), &h, force).unwrap_err();
        assert!(
            matches!(e, Refusal::Partition { ref disk, .. } if disk == "sdb"),
            "{e}"
        );
    }
    // The system disk: refused, and also not removable; --force overrides both, and says so.
    let e = check_block_device((8, 0), &h, false).unwrap_err();
    assert!(matches!(e, Refusal::SystemDisk { .. }), "{e}");
    let forced = check_block_device((8, 0), &h, true).unwrap();
    assert!(
        forced
            .overridden
            .contains(&Refusal::SystemDisk { disk: "sda".into() })
    );
    assert!(
        forced
            .overridden
            .iter()
            .any(|r| matches!(r, Refusal::NotRemovable { .. }))
    );
    // Found through the mount table when / has no device number (overlay, btrfs).
    let mut h2 = host(root);
    h2.root_dev = Some((0, 33));
    assert!(matches!(
        check_block_device((8, 0), &h2, false),
        Err(Refusal::SystemDisk { .. })
    ));
    // And through device-mapper: / on dm-0, which lives on sdc2.
    let mut h3 = host(root);
    h3.root_dev = Some((253, 0));
    let e = check_block_device((8, 32), &h3, false).unwrap_err();
    assert!(
        matches!(e, Refusal::InUse { .. } | Refusal::SystemDisk { .. }),
        "{e}"
    );
    std::fs::remove_dir_all(root.join("sys/devices/pci0000:00/ata1/block/sdc/sdc2/holders")).ok();
    let e = check_block_device((8, 32), &h3, false).unwrap_err();
    assert_eq!(e, Refusal::SystemDisk { disk: "sdc".into() });

    // A fixed disk that is not the system's.
    let e = check_block_device((8, 32), &h, false).unwrap_err();
    assert!(matches!(e, Refusal::NotRemovable { .. }), "{e}");
    assert!(e.to_string().contains("--force"));

    // Mounted, by device number (with an escaped mount point) or by source path.
    std::fs::write(
        root.join("mountinfo"),
        "40 22 8:18 / /media/pi/my\\040card rw - ext4 /dev/sdb2 rw\n",
    )
    .unwrap();
    let e = check_block_device((8, 16), &h, false).unwrap_err();
    assert_eq!(
        e,
        Refusal::Mounted {
            disk: "sdb".into(),
            what: "/dev/sdb2".into(),
            mountpoint: "/media/pi/my card".into()
        }
    );
    std::fs::write(
        root.join("mountinfo"),
        "41 22 0:45 / /mnt rw - btrfs /dev/sdb1 rw\n",
    )
    .unwrap();
    assert!(matches!(
        check_block_device((8, 16), &h, false),
        Err(Refusal::Mounted { .. })
    ));
    std::fs::write(root.join("mountinfo"), "").unwrap();
    // Swap and device-mapper users.
    std::fs::write(
        root.join("swaps"),
        "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2 partition 100 0 -2\n",
    )
    .unwrap();
    assert!(matches!(
        check_block_device((8, 16), &h, false),
        Err(Refusal::InUse { .. })
    ));
    std::fs::write(root.join("swaps"), "").unwrap();
    let sdb1 = root.join("sys/devices/pci0000:00/usb1/1-1/block/sdb/sdb1");
    std::fs::create_dir_all(sdb1.join("holders/dm-3")).unwrap();
    let e = check_block_device((8, 16), &h, false).unwrap_err();
    assert!(
        matches!(e, Refusal::InUse { ref user, .. } if user.contains("dm-3")),
        "{e}"
    );
    std::fs::remove_dir_all(sdb1.join("holders/dm-3")).unwrap();
    assert!(check_block_device((8, 16), &h, false).is_ok());

    // A device sysfs does not know.
    assert!(matches!(
        check_block_device((99, 9), &h, false),
        Err(Refusal::Unknown { .. })
    ));
}

#[test]
fn targets_that_are_not_disks_or_files_are_refused() {
    let dir = scratch("flash-kinds");
    let h = host(dir.path());
    let e = flash::open_target(Path::new("/dev/null"), 1, true, &h).unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("character device"),
        "{e}"
    );
    let e = flash::open_target(dir.path(), 1, true, &h).unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("directory"),
        "{e}"
    );
    let e = flash::open_target(&dir.path().join("nope"), 1, false, &h).unwrap_err();
    assert!(
        e.is_bad_input() && matches!(e, FlashError::NotFound { .. }),
        "{e}"
    );
}

fn pibake(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pibake"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_flash_command() {
    let dir = scratch("flash-cli");
    let (layout, img) = image(dir.path());
    let xz = dir.path().join("golden.img.xz");
    pibake::output::write(&img.disk, &xz, &Silent).unwrap();
    let ranges = bmap::mapped_ranges(&img).unwrap();
    bmap::write(
        &img.disk,
        &ranges,
        &dir.path().join("golden.img.xz.bmap"),
        &Silent,
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Without a terminal and without --yes, nothing is written.
    let dev = card(dir.path(), "card.bin", 0, 0);
    let o = pibake(&["flash", &s(&xz), &s(&dev)]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));
    assert_eq!(std::fs::metadata(&dev).unwrap().len(), 0);

    // With --yes: the bmap beside the image is found, used, and the result verified.
    let o = pibake(&["-q", "flash", &s(&xz), &s(&dev), "--yes"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("golden.img.xz.bmap") && err.contains("verified"),
        "{err}"
    );
    let mapped: Vec<MappedRange> = ranges
        .iter()
        .map(|r| MappedRange {
            bytes: r.clone(),
            sha256: None,
        })
        .collect();
    assert!(same_in_ranges(&dev, &layout.image, &mapped));

    // Not a disk, and no such device: exit 2.
    let o = pibake(&["flash", &s(&xz), "/dev/null", "--yes"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = pibake(&["flash", &s(&xz), &s(&dir.path().join("nope")), "--yes"]);
    assert_eq!(o.status.code(), Some(2));
    // A bmap for another image: exit 2.
    let other = dir.path().join("other.bmap");
    std::fs::write(
        &other,
        std::fs::read_to_string(dir.path().join("golden.img.xz.bmap"))
            .unwrap()
            .replace("<ImageSize>", "<ImageSize> 1"),
    )
    .unwrap();
    let o = pibake(&["flash", &s(&xz), &s(&dev), "--yes", "--bmap", &s(&other)]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
