#!/usr/bin/env bash
# `make e2e`: build (or reuse) the bootable fixtures, then boot pibake's master with the worker
# and upstream on each (run.py says what PASS means). Needs root, qemu-system-x86, debootstrap
# (tests/deps.sh e2e installs them) and a pibake binary: $E2E_PIBAKE, else target/debug/pibake
# (the Makefile builds it first).
#
#   tests/e2e/e2e.sh [SHAPE...]         default: bookworm
#   E2E_ONLY="modern control-unconfigured" tests/e2e/e2e.sh    only these scenarios
#   E2E_ACCEL=tcg|kvm                    skip the KVM probe
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=target/e2e
SHAPES=("${@:-bookworm}")

[ "$(id -u)" -eq 0 ] || { echo "e2e: needs root (debootstrap builds the fixtures); CI runs as root" >&2; exit 1; }
PIBAKE=${E2E_PIBAKE:-target/debug/pibake}
[ -x "$PIBAKE" ] || { echo "e2e: no $PIBAKE (make e2e builds it)" >&2; exit 1; }

args=()
for shape in "${SHAPES[@]}"; do
    t0=$(date +%s)
    img=$(bash tests/e2e/fixture.sh "$shape" "$WORK/fixtures")
    echo "e2e: fixture $shape: $img ($(( $(date +%s) - t0 )) s)" >&2
    args+=(--fixture "$shape=$img")
done
for s in ${E2E_ONLY-}; do
    args+=(--only "$s")
done
exec nice -n 5 python3 tests/e2e/run.py --pibake "$PIBAKE" --workdir "$WORK" "${args[@]}"
