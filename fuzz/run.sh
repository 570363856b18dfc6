#!/usr/bin/env bash
# A bounded fuzz run of every target (or those named): `make fuzz`, FUZZ_SECONDS per target.
#
# New inputs go to target/fuzz-corpus/<target>/ (the committed seeds in fuzz/corpus/ and
# fuzz/regressions/ are read, never written); a crash stops the run and leaves its input in
# fuzz/artifacts/<target>/, to minimise with `cargo fuzz tmin` and keep in fuzz/regressions/.
# cargo fuzz needs nightly's -Z flags: the nightly toolchain when rustup has one, else the
# stable one with RUSTC_BOOTSTRAP=1 (the machine's only toolchain on a fresh CI machine).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-30}
RSS_MB=${FUZZ_RSS_MB:-1024}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("${fuzz[@]}" list)
"${fuzz[@]}" build -O
mkdir -p target/fuzz-logs
for t in "${targets[@]}"; do
  dirs=("target/fuzz-corpus/$t" "fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  mkdir -p "target/fuzz-corpus/$t"
  log="target/fuzz-logs/$t.log"
  rc=0
  "${fuzz[@]}" run -O "$t" "${dirs[@]}" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
    -timeout=10 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "$t: ${runs:-?} runs in ${SECONDS_EACH}s, exit $rc"
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/, the log in $log" >&2
    exit 1
  fi
done
