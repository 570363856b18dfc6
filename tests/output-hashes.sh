#!/usr/bin/env bash
# Records sha256 of every build output (each fixture, route, format) for the given pibake binary.
# usage: tests/output-hashes.sh PIBAKE OUTFILE   (after make fixtures)
# Issue 12 (a refactor) must leave every output byte-identical: record with the binary of the
# commit before the work, again with the one after, and diff the two files.
set -euo pipefail
BIN=$1; OUT=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FIX=$ROOT/target/fixtures
BASES=$ROOT/target/output-hashes/bases
mkdir -p $BASES; W=$(mktemp -d $ROOT/target/output-hashes/run.XXXX)
export SOURCE_DATE_EPOCH=1735689600
R=$W/master.toml
sed -e '/^base = /d' $ROOT/examples/master.toml > $R
R2=$W/min.toml
printf '[node]\nhostname = "routes"\n[user]\nname = "pi"\npassword = "pw-for-tests"\n' > $R2
: > $OUT
rec() { for f in "$@"; do if [ -e "$f" ]; then echo "$(sha256sum < "$f" | cut -c1-64) ${f#$W/}" >> $OUT; fi; done; }
man() { # manifest, with the run directory normalised
  for f in "$@"; do sed "s#$W#RUN#g" "$f" | sha256sum | cut -c1-64 | sed "s#\$# ${f#$W/}#" >> $OUT; done; }
for F in bullseye bookworm trixie gpt; do
  d=$W/$F; mkdir -p $d; export PIBAKE_CACHE_DIR=$d/cache
  base=$FIX/$F.img
  [ -f $BASES/$F.mb.img.xz ] || { mkdir -p $BASES; xz -T2 -6 --block-size=1MiB -c $base > $BASES/$F.mb.img.xz; xz -T1 -6 -c $base > $BASES/$F.sb.img.xz; zstd -q -T2 -c $base > $BASES/$F.img.zst; }
  mb=$BASES/$F.mb.img.xz; sb=$BASES/$F.sb.img.xz; zs=$BASES/$F.img.zst
  for stack in auto modern classic; do
    $BIN plan $R --base $base --stack $stack --json > $d/plan.$stack.json 2>$d/plan.$stack.err || echo "exit $?" >> $d/plan.$stack.err
    sed "s#$W#RUN#g" $d/plan.$stack.json > $d/plan.$stack.n.json; rec $d/plan.$stack.n.json $d/plan.$stack.err
  done
  # full route from raw, every format
  for ext in img img.xz img.zst; do
    $BIN build -q $R --base $base -o $d/full.$ext --bmap > /dev/null
    rec $d/full.$ext $d/full.$ext.bmap; man $d/full.$ext.manifest.json
  done
  $BIN build -q $R2 --base $base -o $d/min.img > /dev/null; rec $d/min.img; man $d/min.img.manifest.json
  $BIN build -q $R --base $base --stack modern -o $d/modern.img > /dev/null; rec $d/modern.img
  if $BIN build -q $R --base $base --stack classic -o $d/classic.img > /dev/null 2>&1; then rec $d/classic.img; fi
  # routes from a multi-block xz base
  $BIN build -q $R --base $mb -o $d/patch.img.xz --bmap > /dev/null; rec $d/patch.img.xz $d/patch.img.xz.bmap; man $d/patch.img.xz.manifest.json
  $BIN build -q $R --base $mb -o $d/cold.img > /dev/null; rec $d/cold.img; man $d/cold.img.manifest.json
  $BIN build -q $R --base $mb -o $d/warm.img > /dev/null; rec $d/warm.img; man $d/warm.img.manifest.json
  $BIN build -q $R --base $mb -o $d/mb.img.zst > /dev/null; rec $d/mb.img.zst
  $BIN build -q $R2 --base $sb -o $d/sb.img > /dev/null; rec $d/sb.img; man $d/sb.img.manifest.json
  $BIN build -q $R2 --base $zs -o $d/zs.img.xz > /dev/null; rec $d/zs.img.xz
  $BIN build -q $R --base $d/full.img -o $d/rebuilt.img > /dev/null; rec $d/rebuilt.img
  $BIN verify -q $d/patch.img.xz.manifest.json > $d/verify.out 2>&1; echo "verify rc=$?" >> $OUT
  rm -rf $d/*.img $d/*.img.xz $d/*.img.zst $d/cache
done
echo done >> $OUT
