#!/usr/bin/env bash
# Build a small, real, bootable amd64 image shaped like a Raspberry Pi OS Lite release, for the
# boot test (issue 15). Needs root (debootstrap) and the Debian archive apt is configured for.
#
#   tests/e2e/fixture.sh SHAPE OUTDIR        SHAPE = bookworm | bullseye
#       -> prints the path of OUTDIR/SHAPE-KEY.img, building it only if it is not there yet.
#
# KEY is a hash of everything that goes into the image (this script, the guest files, the
# shape), so an edit to any of them builds a new one and an unchanged tree reuses the cache.
# The .debs are kept in OUTDIR/debs, so a rebuild downloads nothing.
#
# What makes it Raspberry Pi OS-shaped (../shared/docs/raspios-facts.md):
# - MBR with a fixed disk id, p1 FAT32 "bootfs" (type 0x0c) at the release's offsets with
#   cmdline.txt naming root=PARTUUID=<id>-02, p2 ext4 "rootfs" made by mkfs.ext4 -d with Raspberry
#   Pi OS's feature set (-O ^64bit,^huge_file on a Debian 12 host); no loop device, no mount.
# - Lite's package facts: nftables (service disabled) and dnsmasq-base present, iptables and the
#   dnsmasq package absent, sshd installed but disabled (the boot-partition `ssh` flag or a recipe
#   turns it on), the groups Raspberry Pi OS gives its first user, no user of its own.
# - bookworm: NetworkManager, /etc/sysctl.conf, no rc.local; FAT on /boot/firmware.
# - bullseye: dhcpcd5, /etc/rc.local, /etc/sysctl.conf; FAT on /boot. Built from bookworm's
#   archive (the only one this machine's apt reaches), so /etc/os-release says bookworm: it is
#   bullseye-*shaped*, which is what pibake's facts branch on.
# And what makes it boot in qemu: Debian's amd64 kernel and initramfs in the rootfs' /boot (the
# harness boots them directly with the image's own cmdline.txt), `net.ifnames=0` so the first
# NIC is eth0 as on a Pi, and a .link file naming the NIC with the master's uplink MAC wlan0.
# The observer (guest/observer.py) reports on the serial console and answers the harness.
set -euo pipefail
umask 022
export LC_ALL=C PATH="$PATH:/usr/sbin:/sbin"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=$(date +%s)
log() { echo "[fixture $SHAPE +$(( $(date +%s) - T0 ))s] $*" >&2; }
die() { echo "fixture.sh: error: $*" >&2; exit 1; }

[ $# -eq 2 ] || { echo "usage: $0 bookworm|bullseye OUTDIR" >&2; exit 2; }
SHAPE=$1
OUTDIR=$2

# Packages every shape has: what a Lite image has that the test touches, and the observer's
# python3 (Lite ships python3 too). dbus and polkitd are named because debootstrap does not
# resolve NetworkManager's virtual alternatives.
COMMON="systemd-sysv udev kmod dbus linux-image-amd64 initramfs-tools iproute2 iputils-ping procps
netbase openssh-server openssh-client nftables dnsmasq-base python3"
case $SHAPE in
bookworm)
    SUITE=bookworm; STACK_PKGS="network-manager polkitd libpam-systemd"
    DISK_ID=e2e0b002; P1_START=8192; P1_SECTORS=1048576; P2_START=1056768
    FAT_MOUNT=/boot/firmware; RC_LOCAL=no
    ;;
bullseye)
    SUITE=bookworm; STACK_PKGS="dhcpcd5"
    DISK_ID=e2e0b001; P1_START=8192; P1_SECTORS=524288; P2_START=532480
    FAT_MOUNT=/boot; RC_LOCAL=yes
    ;;
*) die "unknown shape '$SHAPE' (bookworm or bullseye)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap); CI runs as root"
for tool in debootstrap chroot mkfs.ext4 dumpe2fs mkfs.vfat mcopy sfdisk sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool (run make deps)"
done

mkdir -p "$OUTDIR/debs"
OUTDIR=$(cd "$OUTDIR" && pwd)
KEY=$( { echo "$SHAPE"; cat "$0" "$HERE"/guest/*; } | sha256sum | cut -c1-12)
OUT=$OUTDIR/$SHAPE-$KEY.img
if [ -s "$OUT" ]; then
    echo "$OUT"
    exit 0
fi

# The mirror apt already uses (CI machines point it at their own), else Debian's.
MIRROR=$(apt-cache policy 2>/dev/null | awk '/ bookworm\/main amd64 Packages/ { print $2; exit }')
MIRROR=${MIRROR:-http://deb.debian.org/debian}

WORK=$(mktemp -d "$OUTDIR/.build-$SHAPE.XXXXXX")
ROOT=$WORK/root
cleanup() {
    # debootstrap mounts /proc and /sys in the target while it installs; never leave them.
    local m
    for m in "$ROOT/proc" "$ROOT/sys" "$ROOT/dev/pts"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "fixture.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- the root tree
bootstrap() {
    local pkgs
    pkgs=$(echo $COMMON $STACK_PKGS | tr ' ' ,)
    log "debootstrap $SUITE from $MIRROR (+ $pkgs)"
    # Two stages so that dpkg can be told not to fsync every file in between: the tree is
    # thrown away if anything fails, and the fsyncs cost minutes on a busy disk.
    if ! { nice -n 10 debootstrap --foreign --variant=minbase --arch=amd64 --cache-dir="$OUTDIR/debs" \
            --include="$pkgs" "$SUITE" "$ROOT" "$MIRROR" &&
        mkdir -p "$ROOT/etc/dpkg/dpkg.cfg.d" &&
        echo force-unsafe-io >"$ROOT/etc/dpkg/dpkg.cfg.d/pibake-e2e-unsafe-io" &&
        small_initramfs &&
        nice -n 10 chroot "$ROOT" /debootstrap/debootstrap --second-stage; } >"$WORK/debootstrap.log" 2>&1; then
        tail -n 20 "$WORK/debootstrap.log" >&2
        [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 20 "$ROOT/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    fi
}

# A small initramfs: only what finds a virtio disk by PARTUUID and mounts ext4. The default
# (MODULES=most) is five times larger, and emulated CPUs pay for every byte at each boot. Set up
# between debootstrap's stages, so the kernel's own postinst builds it, once.
small_initramfs() {
    mkdir -p "$ROOT/etc/initramfs-tools/conf.d" "$ROOT/etc/initramfs-tools/hooks"
    echo MODULES=list >"$ROOT/etc/initramfs-tools/conf.d/pibake-e2e"
    cat >"$ROOT/etc/initramfs-tools/hooks/pibake-e2e" <<'EOF'
#!/bin/sh
# pibake e2e fixture: the modules a qemu guest needs to mount its virtio root disk.
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules virtio_pci virtio_blk ext4
EOF
    chmod 0755 "$ROOT/etc/initramfs-tools/hooks/pibake-e2e"
}

# What Raspberry Pi OS's pi-gen does to a fresh Debian tree, the parts the test relies on.
shape_like_raspios() {
    log "shaping the tree like Raspberry Pi OS Lite ($SHAPE)"
    echo raspberrypi >"$ROOT/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\traspberrypi\n' \
        >"$ROOT/etc/hosts"
    cat >"$ROOT/etc/fstab" <<EOF
proc            /proc           proc    defaults          0       0
PARTUUID=$DISK_ID-01  $FAT_MOUNT  vfat    defaults          0       2
PARTUUID=$DISK_ID-02  /               ext4    defaults,noatime  0       1
EOF
    # A fixed machine id: every VM of a run boots the same tree, and an empty one would make
    # systemd treat each boot as a first boot and apply presets, which real cards do only once.
    echo "$KEY" | sha256sum | cut -c1-32 >"$ROOT/etc/machine-id"
    local g
    for g in adm dialout cdrom sudo audio video plugdev games users input render netdev gpio i2c spi; do
        chroot "$ROOT" groupadd -f -r "$g"
    done
    # Lite: sshd installed but off until `ssh` on bootfs or a recipe enables it; nftables off.
    chroot "$ROOT" systemctl disable -q ssh.service nftables.service 2>/dev/null || true
    rm -f "$ROOT/etc/systemd/system/sshd.service"
    if [ "$RC_LOCAL" = yes ]; then
        printf '#!/bin/sh -e\n#\n# rc.local\n#\n# This script is executed at the end of each multiuser runlevel.\n\nexit 0\n' \
            >"$ROOT/etc/rc.local"
        chmod 0755 "$ROOT/etc/rc.local"
    else
        rm -f "$ROOT/etc/rc.local"
    fi
    [ -f "$ROOT/etc/sysctl.conf" ] || die "procps did not ship /etc/sysctl.conf"
}

install_observer() {
    log "installing the e2e observer"
    install -D -m 0755 "$HERE/guest/observer.py" "$ROOT/usr/local/lib/pibake-e2e/observer.py"
    install -D -m 0755 "$HERE/guest/peer-echo.py" "$ROOT/usr/local/lib/pibake-e2e/peer-echo.py"
    install -D -m 0644 "$HERE/guest/pibake-e2e-observer.service" \
        "$ROOT/etc/systemd/system/pibake-e2e-observer.service"
    install -D -m 0644 "$HERE/guest/90-pibake-e2e.rules" "$ROOT/etc/udev/rules.d/90-pibake-e2e.rules"
    install -D -m 0644 "$HERE/guest/10-pibake-e2e-wlan0.link" \
        "$ROOT/etc/systemd/network/10-pibake-e2e-wlan0.link"
}

# The fixture must have exactly the package facts the issue names, or the test proves nothing.
check_packages() {
    local p present
    present=$(chroot "$ROOT" dpkg-query -W -f '${Package} ${db:Status-Abbrev}\n' | awk '$2 == "ii" { print $1 }')
    for p in nftables dnsmasq-base openssh-server python3 $STACK_PKGS; do
        grep -qx "$p" <<<"$present" || die "package $p missing from the $SHAPE fixture"
    done
    for p in iptables dnsmasq; do
        ! grep -qx "$p" <<<"$present" || die "package $p must not be in the $SHAPE fixture"
    done
    if [ "$SHAPE" = bookworm ]; then
        ! grep -qx dhcpcd5 <<<"$present" || die "dhcpcd5 must not be in the bookworm fixture"
    else
        ! grep -qx network-manager <<<"$present" || die "network-manager must not be in the bullseye fixture"
    fi
}

tidy_tree() {
    rm -rf "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log \
        "$ROOT"/tmp/* "$ROOT"/debootstrap
    rm -f "$ROOT"/var/cache/apt/archives/*.deb "$ROOT/etc/dpkg/dpkg.cfg.d/pibake-e2e-unsafe-io"
}

# ---------------------------------------------------------------------------- the disk
boot_files() {
    mkdir -p "$WORK/boot"
    # The image's own kernel command line: what the harness boots with, and what pibake edits.
    echo "console=ttyS0,115200 root=PARTUUID=$DISK_ID-02 rootfstype=ext4 fsck.repair=yes rootwait net.ifnames=0" \
        >"$WORK/boot/cmdline.txt"
    printf '# pibake e2e fixture (%s-shaped, amd64): the kernel is in the rootfs /boot\nauto_initramfs=1\n' \
        "$SHAPE" >"$WORK/boot/config.txt"
}

make_disk() {
    local root_mib p2_sectors fat ext disk
    # Room for the tree plus a third, as a freshly written card has before it is resized.
    root_mib=$(( $(du -sm "$ROOT" | cut -f1) * 4 / 3 + 64 ))
    p2_sectors=$(( root_mib * 2048 ))
    fat=$WORK/boot.vfat ext=$WORK/root.ext4 disk=$WORK/disk.img

    log "FAT32 bootfs (${P1_SECTORS} sectors)"
    truncate -s $(( P1_SECTORS * 512 )) "$fat"
    mkfs.vfat -n bootfs -F 32 -s 4 -i "${DISK_ID^^}" -h "$P1_START" "$fat" >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -i "$fat" "$WORK/boot/cmdline.txt" "$WORK/boot/config.txt" ::

    log "ext4 rootfs (${root_mib} MiB) with mkfs.ext4 -d"
    truncate -s $(( p2_sectors * 512 )) "$ext"
    nice -n 10 mkfs.ext4 -q -L rootfs -O ^64bit,^huge_file -b 4096 -I 256 -d "$ROOT" "$ext"
    local want="has_journal ext_attr resize_inode dir_index filetype extent flex_bg sparse_super large_file dir_nlink extra_isize metadata_csum"
    local got
    got=$(dumpe2fs -h "$ext" 2>/dev/null | sed -n 's/^Filesystem features:[[:space:]]*//p')
    [ "$(tr ' ' '\n' <<<"$got" | sort | xargs)" = "$(tr ' ' '\n' <<<"$want" | sort | xargs)" ] \
        || die "rootfs features are '$got', not Raspberry Pi OS's '$want'"

    log "MBR disk $DISK_ID"
    truncate -s $(( (P2_START + p2_sectors) * 512 )) "$disk"
    sfdisk -q "$disk" <<EOF
label: dos
label-id: 0x$DISK_ID
unit: sectors
start=$P1_START, size=$P1_SECTORS, type=c
start=$P2_START, size=$p2_sectors, type=83
EOF
    dd if="$fat" of="$disk" bs=1M oflag=seek_bytes seek=$(( P1_START * 512 )) conv=notrunc,sparse status=none
    dd if="$ext" of="$disk" bs=1M oflag=seek_bytes seek=$(( P2_START * 512 )) conv=notrunc,sparse status=none
    mv "$disk" "$OUT"
}

bootstrap
shape_like_raspios
install_observer
check_packages
tidy_tree
boot_files
make_disk
ln -sfn "$(basename "$OUT")" "$OUTDIR/$SHAPE.img"
log "done: $OUT ($(du -h --apparent-size "$OUT" | cut -f1), $(du -h "$OUT" | cut -f1) on disk)"
echo "$OUT"
