#!/usr/bin/env bash
# bench/nbd_driver/run.sh - the nbd driver against fio's nbd engine (libnbd
# directly): both clients against the same nbdkit server, in the same run,
# interleaved (ours, fio, ours, fio, ...). Prints medians and ours/fio.
#
# Server: nbdkit 1.32 memory plugin on a Unix socket (the server is the same
# for both, so the ratio shows what the library adds on top of libnbd).
# Workloads: 4 KiB random read and write at depth 1 and 32, one connection.
#
# Usage: bench/nbd_driver/run.sh [--build DIR] [--seconds S] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build
SECONDS_PER=4
ROUNDS=5
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) BUILD=$2; shift ;;
    --seconds) SECONDS_PER=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
BLKSTACK=$BUILD/tools/blkstack/blkstack
LIB=$BUILD/src/libblkio.so.1
[[ -x $BLKSTACK && -e $LIB ]] || { echo "build first (scripts/build.sh release)" >&2; exit 2; }
command -v fio >/dev/null && command -v nbdkit >/dev/null || { echo "needs fio and nbdkit (scripts/install-deps.sh)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/blkstack-nbd-driver-bench.XXXXXX)
trap 'kill $(cat "$WORK/pid" 2>/dev/null) 2>/dev/null; rm -rf "$WORK"' EXIT
SOCK=$WORK/sock
nbdkit -U "$SOCK" -P "$WORK/pid" --threads 16 memory 256M
for _ in $(seq 100); do [[ -s $WORK/pid ]] && break; sleep 0.1; done
URI="nbd+unix:///?socket=$SOCK"
# Fill the image so reads move data, not holes.
nbdcopy -- [ nbdkit pattern 256M ] "$URI"

ours() {  # RW DEPTH -> IOPS
  local write=()
  [[ $1 == randwrite ]] && write=(--write)
  "$BLKSTACK" bench-one --lib "$LIB" --driver nbd --prop "uri=$URI" --seconds "$SECONDS_PER" \
    --bs 4096 --depth "$2" "${write[@]}" | awk '/^IOPS/ {print $2}'
}
fio_nbd() {  # RW DEPTH -> IOPS
  fio --name=x --ioengine=nbd --uri="$URI" --rw="$1" --bs=4k --iodepth="$2" --size=256M \
    --time_based --runtime="$SECONDS_PER" --output-format=json 2>/dev/null |
    # (fio's nbd engine prints a line of its own before the JSON)
    python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]; print(round(j["read"]["iops"]+j["write"]["iops"]))'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

printf '%-18s %12s %12s %8s\n' workload "ours IOPS" "fio-nbd IOPS" ours/fio
for rw in randread randwrite; do
  for depth in 1 32; do
    : >"$WORK/o"; : >"$WORK/f"
    for _ in $(seq "$ROUNDS"); do
      ours "$rw" "$depth" >>"$WORK/o"
      fio_nbd "$rw" "$depth" >>"$WORK/f"
    done
    o=$(median <"$WORK/o"); f=$(median <"$WORK/f")
    printf '%-18s %12.0f %12.0f %8.3f\n' "$rw-4k-qd$depth" "$o" "$f" "$(awk -v o="$o" -v f="$f" 'BEGIN {print (f > 0) ? o / f : 0}')"
  done
done
