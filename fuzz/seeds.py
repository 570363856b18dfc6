#!/usr/bin/env python3
"""Regenerate fuzz/corpus/<target>/ seeds from the fixtures, the examples and small files made
here with the real tools (mke2fs, mkfs.vfat, mtools, sfdisk, xz, gpg, bmaptool).

Run from the repository root after `make fixtures`: `python3 fuzz/seeds.py`. Seeds are small on
purpose (libFuzzer mutates every byte it is given): disk seeds keep only the bytes that matter
and declare the rest as zeros through the 4-byte length prefix the disk targets read (see
`Sparse` in src/fuzzing.rs). The seeds are committed; rerunning rewrites them.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
FIXTURES = ROOT / "target" / "fixtures"
EPOCH = "1735689600"


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw).stdout


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def sparse(data, length=None):
    """A disk seed: length in sectors, then `data` without its trailing zeros."""
    length = len(data) if length is None else length
    return struct.pack("<I", (length + 511) // 512) + data.rstrip(b"\0")


def head(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def partitions(img):
    """(start, size) in bytes of each partition, from sfdisk."""
    table = json.loads(run("sfdisk", "--json", str(img)))["partitiontable"]
    return [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]


def etc_tree(d):
    (d / "etc").mkdir(parents=True)
    (d / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
        "VERSION_CODENAME=bookworm\n"
    )
    (d / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n")
    (d / "etc/fstab").write_text("PARTUUID=6c586e13-01 /boot/firmware vfat defaults 0 2\n")
    (d / "etc/hostname").write_text("raspberrypi\n")
    os.symlink("usr/lib", d / "lib")
    (d / "usr/lib").mkdir(parents=True)


def ext4_images(tmp):
    """Small ext4s as mke2fs makes them: 1 KiB blocks without a journal, and 4 KiB blocks with
    the features Raspberry Pi OS uses (64bit, metadata_csum, flex_bg, extents)."""
    tree = tmp / "tree"
    etc_tree(tree)
    out = []
    for name, args, size in [
        ("tiny-1k", ["-b", "1024", "-N", "32", "-O", "^has_journal,^resize_inode"], "192K"),
        ("csum-4k", ["-b", "4096", "-N", "64", "-O", "^has_journal"], "1M"),
        ("ext2-1k", ["-t", "ext2", "-b", "1024", "-N", "32"], "256K"),
    ]:
        img = tmp / f"{name}.ext4"
        t = [] if "-t" in args else ["-t", "ext4"]
        run("mke2fs", "-q", "-F", *t, "-E", "root_owner=0:0", "-d", str(tree), *args, str(img), size,
            env={**os.environ, "E2FSPROGS_FAKE_TIME": EPOCH})
        out.append((name, img))
    return out


def fat_images(tmp):
    """Small FAT12, FAT16 and FAT32 volumes holding a cmdline.txt, a config.txt and a directory."""
    files = tmp / "fatfiles"
    files.mkdir()
    (files / "cmdline.txt").write_text("console=serial0 root=PARTUUID=6c586e13-02 rootwait\n")
    (files / "config.txt").write_text("[all]\narm_64bit=1\n")
    out = []
    for name, args, kib in [
        ("fat12", ["-F", "12"], 160),
        ("fat16", ["-F", "16", "-s", "1"], 4200),
        ("fat32", ["-F", "32", "-s", "1", "-S", "512"], 34000),
    ]:
        img = tmp / f"{name}.img"
        run("mkfs.vfat", "-C", "-i", "6c586e13", "-n", "BOOTFS", *args, str(img), str(kib))
        run("mcopy", "-i", str(img), str(files / "cmdline.txt"), str(files / "config.txt"), "::/")
        run("mmd", "-i", str(img), "::/overlays")
        out.append((name, img))
    return out


def fat_seed(img):
    """Boot sector, reserved sectors, the first FAT's used part and the root directory."""
    data = img.read_bytes()
    bps, spc, reserved, fats = struct.unpack_from("<HBHB", data, 11)
    root_entries, total16, _, fat16 = struct.unpack_from("<HHBH", data, 17)
    fat_sectors = fat16 or struct.unpack_from("<I", data, 36)[0]
    data_start = (reserved + fats * fat_sectors) * bps + root_entries * 32
    if fat16 == 0:
        # FAT32's FATs are hundreds of KiB even on the smallest volume, and its root directory
        # lies after them: keep the boot sectors and the start of the first FAT only.
        end = reserved * bps + 4096
        return sparse(data[:end], len(data))
    keep = bytearray(len(data))
    keep[: reserved * bps] = data[: reserved * bps]
    for f in range(fats):
        at = (reserved + f * fat_sectors) * bps
        keep[at : at + 4096] = data[at : at + 4096]
    keep[data_start - root_entries * 32 : data_start + 16 * spc * bps] = data[
        data_start - root_entries * 32 : data_start + 16 * spc * bps
    ]
    # Between the regions kept, only zeros: the sparse prefix cannot drop them, so the seed
    # is cut after the last kept byte and the rest declared as zeros.
    return sparse(bytes(keep), len(data))


def xz_files(tmp):
    text = "".join(f"{i} the quick brown fox {i * i}\n" for i in range(400)).encode()
    src = tmp / "data"
    src.write_bytes(text)
    out = {}
    for name, args in [
        ("crc64-1k-blocks", ["--block-size=1024", "-T1"]),
        ("crc32-blocks", ["--block-size=3000", "--check=crc32", "-T1"]),
        ("sha256-blocks", ["--block-size=4096", "--check=sha256", "-T1"]),
        ("none-one-block", ["--check=none", "-T1"]),
        ("mt-2-blocks", ["-T2", "--block-size=8192"]),
        ("stored", ["-0", "--block-size=2048", "-T1", "--format=xz"]),
    ]:
        out[name] = run("xz", "-c", *args, str(src))
    out["two-streams-padded"] = out["crc64-1k-blocks"] + b"\0" * 8 + out["crc64-1k-blocks"]
    out["empty"] = run("xz", "-c", "-T1", input=b"")
    return out


def xz_blocks(xz_bytes):
    """(check, header, unpadded, uncompressed, raw block) of each block, from `xz --robot -lvv`."""
    with tempfile.NamedTemporaryFile(suffix=".xz") as f:
        f.write(xz_bytes)
        f.flush()
        listing = run("xz", "--robot", "-lvv", f.name).decode()
    checks = {"None": 0, "CRC32": 1, "CRC64": 4, "SHA-256": 10}
    out = []
    for line in listing.splitlines():
        cols = line.split("\t")
        if cols[0] != "block":
            continue
        # block, stream, block in stream, block, compressed offset, uncompressed offset, total
        # size, uncompressed size, ratio, check, check value, header size, size flags,
        # compressed size, memory, filters
        offset, total, usize = int(cols[4]), int(cols[6]), int(cols[7])
        check, header, csize = checks[cols[9]], int(cols[11]), int(cols[13])
        check_size = {0: 0, 1: 4, 4: 8, 10: 32}[check]
        unpadded = header + csize + check_size
        raw = xz_bytes[offset : offset + total]
        out.append((check, header, csize, unpadded, usize, raw))
    return out


def gpg_material(tmp):
    home = tmp / "gnupg"
    home.mkdir(mode=0o700)
    g = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    run(*g, "--quick-gen-key", "fuzz@example.invalid", "ed25519", "sign", "never")
    run(*g, "--quick-add-key", run(*g, "--list-keys", "--with-colons").decode().split("fpr:::::::::")[1].split(":")[0], "rsa2048", "sign", "never")
    (tmp / "signed").write_bytes(b"an image\n")
    binary_key = run(*g, "--export", "fuzz@example.invalid")
    armored_key = run(*g, "--export", "--armor", "fuzz@example.invalid")
    run(*g, "--detach-sign", "-o", str(tmp / "signed.sig"), str(tmp / "signed"))
    run(*g, "--detach-sign", "--armor", "-o", str(tmp / "signed.asc"), str(tmp / "signed"))
    return binary_key, armored_key, (tmp / "signed.sig").read_bytes(), (tmp / "signed.asc").read_bytes()


def with_split(key, sig):
    """The openpgp target's layout: a byte placing the split, then key and signature."""
    data = key + sig
    split = min(255, (len(key) * 256 + len(data) - 1) // len(data))
    return bytes([split]) + data


def main():
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)

        # Partition tables: the first sectors of each fixture (the GPT's array too), the whole
        # disk declared by the length prefix; and a small disk with real filesystems for `image`.
        for r in ["bullseye", "bookworm", "trixie", "gpt"]:
            img = FIXTURES / f"{r}.img"
            n = 34 * 512 if r == "gpt" else 512
            put("partition", r, sparse(head(img, 0, n), img.stat().st_size))
        mini = tmp / "mini.img"
        exts = dict(ext4_images(tmp))
        fats = dict(fat_images(tmp))
        boot, root = fats["fat12"].read_bytes(), exts["tiny-1k"].read_bytes()
        boot_at, root_at = 64 * 512, 64 * 512 + len(boot)
        mini.write_bytes(bytes(root_at + len(root)))
        run("sfdisk", "--no-reread", "--no-tell-kernel", str(mini),
            input=f"label: dos\nlabel-id: 0x6c586e13\n{boot_at // 512},{len(boot) // 512},c\n"
                  f"{root_at // 512},{len(root) // 512},83\n".encode())
        with open(mini, "r+b") as f:
            f.seek(boot_at)
            f.write(boot)
            f.seek(root_at)
            f.write(root)
        disk = mini.read_bytes()
        put("partition", "mini-mbr", sparse(disk[:512], len(disk)))
        put("image", "mini", sparse(disk))
        for r in ["bookworm", "gpt"]:
            img = FIXTURES / f"{r}.img"
            put("image", f"{r}-head", sparse(head(img, 0, 34 * 512), img.stat().st_size))

        # ext4: the small filesystems whole, and the head of each fixture's root partition
        # (superblock, descriptors, bitmaps), the rest of the partition declared as zeros.
        for name, img in exts.items():
            data = img.read_bytes()
            for target in ["ext4_free", "ext4_read", "ext4_edit"]:
                if target != "ext4_edit" or name != "csum-4k":
                    put(target, name, sparse(data))
        for r in ["bullseye", "gpt"]:
            img = FIXTURES / f"{r}.img"
            start, size = partitions(img)[1]
            put("ext4_free", f"{r}-root-head", sparse(head(img, start, 64 << 10), size))

        # FAT: the small volumes (FAT12 whole, FAT16/32 as their metadata) and the fixture's.
        for name, img in fats.items():
            seed = sparse(img.read_bytes()) if name == "fat12" else fat_seed(img)
            for target in ["fat_free", "fat_read", "fat_edit"]:
                put(target, name, seed)
        img = FIXTURES / "bookworm.img"
        start, size = partitions(img)[0]
        put("fat_free", "bookworm-boot-head", sparse(head(img, start, 24 << 10), size))

        # xz: whole small files, their blocks with the index's sizes, and their LZMA2 streams.
        for name, data in xz_files(tmp).items():
            put("xz_index", name, data)
            for i, (check, header, csize, unpadded, usize, raw) in enumerate(xz_blocks(data)[:2]):
                if usize >= 1 << 24:
                    continue
                pad = len(raw) - unpadded
                put("xz_block", f"{name}-{i}", bytes([check]) + usize.to_bytes(3, "little")
                    + bytes([pad, 0x80]) + raw)
                put("lzma2", f"{name}-{i}", raw[header : header + csize])

        # Texts.
        put("recipe", "master", (ROOT / "examples/master.toml").read_bytes())
        put("recipe", "empty", b"")
        put("recipe", "sensor", b'[node]\nhostname = "s1"\nrole = "worker"\n[user]\nname = "pi"\n')
        for ov in sorted((ROOT / "overlays").glob("*/overlay.toml")) + [ROOT / "tests/roles/sensor/overlay.toml"]:
            put("overlay", ov.parent.name, ov.read_bytes())
        put("oslist", "nested", json.dumps({"os_list": [
            {"name": "Raspberry Pi OS (other)", "subitems": [
                {"name": "Raspberry Pi OS Lite (64-bit)",
                 "url": "https://h/2025-11-24-raspios-trixie-arm64-lite.img.xz",
                 "extract_size": 2864709632, "extract_sha256": "a" * 64,
                 "image_download_size": 531000000, "image_download_sha256": "b" * 64,
                 "release_date": "2025-11-24", "init_format": "cloudinit-rpi"},
                {"name": "Raspberry Pi OS (32-bit)", "url": "2024-11-19-raspios-bookworm-armhf.img.xz",
                 "architecture": "armhf", "extract_size": "123"}]},
            {"name": "Misc", "subitems_url": "misc.json"},
            {"name": "Erase"}]}, indent=1).encode())
        put("oslist", "array", b'[{"name": "x", "url": "file:///a/b.img"}]')
        (tmp / "plain").write_bytes(bytes(range(256)) * 64)
        run("bmaptool", "create", "-o", str(tmp / "plain.bmap"), str(tmp / "plain"))
        put("bmap", "bmaptool", (tmp / "plain.bmap").read_bytes())
        put("bmap", "v1", b'<?xml version="1.0" ?>\n<bmap version="1.4">\n<ImageSize> 8192 </ImageSize>\n'
            b'<BlockSize> 4096 </BlockSize>\n<BlocksCount> 2 </BlocksCount>\n<MappedBlocksCount> 1 '
            b'</MappedBlocksCount>\n<BlockMap>\n<Range sha1="00"> 0 </Range>\n</BlockMap>\n</bmap>\n')
        put("manifest", "build", manifest_seed(tmp))
        put("facts", "bookworm", b"\0".join([
            (tmp / "tree/etc/os-release").read_bytes(), (tmp / "tree/etc/passwd").read_bytes(),
            b"Package: dnsmasq\nStatus: install ok installed\n\nPackage: nftables\nStatus: deinstall ok config-files\n",
            (tmp / "tree/etc/fstab").read_bytes(), b"root=PARTUUID=6c586e13-02 rootwait\n"]))
        put("sidecar", "sha256sum", b"a" * 64 + b"  2025-11-24-raspios-trixie-arm64-lite.img.xz\n")
        put("sidecar", "prefixed", b"sha256:" + b"F" * 64)
        bkey, akey, bsig, asig = gpg_material(tmp)
        put("openpgp", "binary", with_split(bkey, bsig))
        put("openpgp", "armored", with_split(akey, asig))
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"{sum(1 for f in CORPUS.rglob('*') if f.is_file())} seeds, {total} bytes", file=sys.stderr)


def manifest_seed(tmp):
    """The manifest of a real build of the example recipe on the bookworm fixture."""
    pibake = ROOT / "target" / "debug" / "pibake"
    out = tmp / "m.img"
    run(str(pibake), "--quiet", "build", str(ROOT / "examples/master.toml"), "--base",
        str(FIXTURES / "bookworm.img"), "--epoch", EPOCH, "-o", str(out),
        "--cache-dir", str(tmp / "cache"))
    return (tmp / "m.img.manifest.json").read_bytes()


if __name__ == "__main__":
    main()
