#!/usr/bin/env bash
# `make deps`: the Debian packages the demo and the tests need, installed when missing.
# `tests/deps.sh e2e` does the same for the boot test (`make e2e`).
#
# Each line below is a command the fixtures or the tests run and the package that ships it. As
# root with apt-get, what is missing is named and then installed; otherwise the exact command to
# run is printed and the script fails, so `make demo` / `make test` stop before a confusing
# "missing tool" half-way through.
set -euo pipefail

# command   package          used for
needs='
mkfs.ext4   e2fsprogs        fixtures: ext4 root partitions
e2fsck      e2fsprogs        oracle: every ext4 edit is checked with e2fsck -fn
debugfs     e2fsprogs        oracle: reads files, modes and owners back
mkfs.vfat   dosfstools       fixtures: FAT boot partitions
fsck.vfat   dosfstools       oracle: every FAT edit is checked with fsck.vfat -n
mcopy       mtools           fixtures and oracle: FAT files in and out
sfdisk      fdisk            fixtures: MBR and GPT partition tables
xz          xz-utils         compressed bases and outputs, xz -t
zstd        zstd             compressed bases and outputs
gzip        gzip             compressed bases
python3     python3          fixtures: the deterministic staging trees
dnsmasq     dnsmasq-base     oracle: dnsmasq --test on the generated configuration
nft         nftables         oracle: nft -c on the generated rules
iptables-restore iptables    oracle: iptables-restore --test on the classic rules
sshd        openssh-server   oracle: sshd -t on the generated sshd configuration
ssh-keygen  openssh-client   tests: key fingerprints
openssl     openssl          tests: password hashes checked by an independent crypt
gpg         gpg              tests: detached OpenPGP signatures made by a real signer
unshare     util-linux       tests: network-less namespaces
bmaptool    bmap-tools       oracle: bmaptool copy reproduces images from .bmap files
'

# `make e2e` (tests/deps.sh e2e): the boot test's bootable fixtures and virtual machines.
e2e_needs='
debootstrap debootstrap      e2e fixtures: real Debian trees from the configured archive
qemu-system-x86_64 qemu-system-x86 e2e: boots the master, a worker and an upstream
mkfs.ext4   e2fsprogs        e2e fixtures: rootfs by mkfs.ext4 -d; debugfs reads the kernel back
mkfs.vfat   dosfstools       e2e fixtures: FAT32 bootfs
mtype       mtools           e2e fixtures and harness: cmdline.txt in and out
sfdisk      fdisk            e2e fixtures: the MBR
python3     python3          e2e: the harness
ssh-keygen  openssh-client   e2e: the key the recipe authorises for the SSH check
'
case "${1-}" in
'') ;;
e2e) needs=$e2e_needs ;;
*) echo "usage: $0 [e2e]" >&2; exit 2 ;;
esac

# sbin directories are not on every user's PATH, but the tools there are still usable by path.
have() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local d
  for d in /usr/sbin /sbin /usr/local/sbin; do
    [ -x "$d/$1" ] && return 0
  done
  return 1
}

missing_pkgs=()
missing_cmds=()
while read -r cmd pkg _; do
  [ -n "$cmd" ] || continue
  if ! have "$cmd"; then
    missing_cmds+=("$cmd")
    case " ${missing_pkgs[*]-} " in *" $pkg "*) ;; *) missing_pkgs+=("$pkg") ;; esac
  fi
done <<<"$needs"

if [ ${#missing_pkgs[@]} -eq 0 ]; then
  exit 0
fi

echo "deps: missing ${missing_cmds[*]}" >&2
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps: installing ${missing_pkgs[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
  echo "deps: installed ${missing_pkgs[*]}" >&2
  exit 0
fi

echo "deps: run this first, then try again:" >&2
echo "  sudo apt-get install --no-install-recommends ${missing_pkgs[*]}" >&2
exit 1
