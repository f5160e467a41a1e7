#!/usr/bin/env bash
# The rbd driver against the other ways to drive librbd, on the same
# throwaway single-node cluster (scripts/ceph-cluster.sh, memstore OSD) in
# the same run:
#   ours  - `blkstack bench-one` through OUR libblkio.so.1, driver rbd
#   fio   - fio's rbd engine (librbd directly)
#   qemu  - qemu-img bench on QEMU's rbd block driver; qemu-img bench has no
#           random mode, so it strides 1031 blocks per request (every request
#           on another object, all 4 KiB blocks visited): close to random.
# 4 KiB random reads and writes at depth 1 and 32; contenders interleaved,
# median of --repeat runs; prints IOPS and the ratio ours/fio.
# librbd's configuration is the same for all: the cluster's ceph.conf with
# rbd_cache_writethrough_until_flush off (see below), plus CEPH_ARGS if set.
#
# Usage: bench/rbd/run.sh [BUILD_DIR] [--runtime S] [--repeat N] [--no-qemu]
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$SRC/build
RUNTIME=5
REPEAT=3
QEMU=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --runtime) RUNTIME=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --no-qemu) QEMU=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) BUILD=$1 ;;
  esac
  shift
done
BUILD=$(cd "$BUILD" && pwd)
BLKSTACK=$BUILD/tools/blkstack/blkstack
LIB=$BUILD/src/libblkio.so.1
[[ -x $BLKSTACK && -e $LIB ]] || { echo "build first: ninja -C $BUILD blkstack blkio" >&2; exit 2; }
command -v fio >/dev/null || { echo "fio is missing (apt-get install fio)" >&2; exit 2; }
command -v qemu-img >/dev/null || QEMU=0

WORK=$(mktemp -d /tmp/blkstack-rbd-bench.XXXXXX)
CLUSTER=$WORK/ceph
cleanup() { "$SRC/scripts/ceph-cluster.sh" stop "$CLUSTER" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
"$SRC/scripts/ceph-cluster.sh" start "$CLUSTER" >/dev/null
# One librbd configuration for all contenders. fio's rbd engine puts
# librbd's cache into early-acknowledged writes on its own (the first flush
# or cache invalidation ends rbd_cache_writethrough_until_flush); the others
# would stay in writethrough until they flush. Start all of them there, as a
# guest that flushes would, so that writes compare like with like.
cp "$CLUSTER/ceph.conf" "$WORK/bench.conf"
printf '[client]\nrbd cache writethrough until flush = false\n' >>"$WORK/bench.conf"
export CEPH_CONF=$WORK/bench.conf
IMAGE=bench
SIZE_MIB=1024
rbd create --size ${SIZE_MIB}M $IMAGE
# Fill it, so that reads read data, not holes.
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=$IMAGE --rw=write --bs=4M \
  --iodepth=8 --size=${SIZE_MIB}M --output-format=terse >/dev/null 2>&1

echo "cluster: $(ceph --version | cut -d' ' -f1-3), 1 mon + 1 memstore OSD on loopback; image ${SIZE_MIB} MiB, 4 MiB objects" >&2
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')); ${RUNTIME} s per run, median of ${REPEAT}" >&2

fio_iops() {  # RW DEPTH
  # --invalidate=0: no rbd_invalidate_cache() before the run (the others do
  # nothing like it).
  fio --name=b --ioengine=rbd --clientname=admin --pool=rbd --rbdname=$IMAGE --rw="$1" --bs=4k --invalidate=0 \
    --iodepth="$2" --runtime="$RUNTIME" --time_based --norandommap --randrepeat=0 --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("%.0f" % (j["read"]["iops"] + j["write"]["iops"]))'
}

ours_iops() {  # WRITE(0|1) DEPTH EXPECTED_IOPS
  local count out
  count=$(python3 -c "print(max(2000, int($3 * $RUNTIME)))")
  out=$("$BLKSTACK" bench-one --lib "$LIB" --driver rbd --prop pool=rbd --prop image=$IMAGE \
    --prop "conf=$CEPH_CONF" --count "$count" --bs 4096 --depth "$2" $([[ $1 == 1 ]] && echo --write))
  # "N requests in S s"
  awk '/requests in/ { printf "%.0f\n", $1 / $4 }' <<<"$out"
}

qemu_iops() {  # WRITE(0|1) DEPTH EXPECTED_IOPS
  local count secs
  count=$(python3 -c "print(max(2000, int($3 * $RUNTIME)))")
  secs=$(qemu-img bench -c "$count" -d "$2" -s 4096 -S $((4096 * 1031)) $([[ $1 == 1 ]] && echo -w) \
    --image-opts "driver=raw,file.driver=rbd,file.pool=rbd,file.image=$IMAGE,file.conf=$CEPH_CONF" 2>&1 |
    sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
  python3 -c "print('%.0f' % ($count / $secs))"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }'; }

printf '\n%-18s %10s %10s %10s %9s %9s\n' workload ours fio qemu ours/fio ours/qemu
for wl in randread:0:1 randread:0:32 randwrite:1:1 randwrite:1:32; do
  IFS=: read -r rw wr depth <<<"$wl"
  o=() f=() q=()
  for ((i = 0; i < REPEAT; i++)); do
    fi_=$(fio_iops "$rw" "$depth")
    f+=("$fi_")
    o+=("$(ours_iops "$wr" "$depth" "$fi_")")
    [[ $QEMU == 1 ]] && q+=("$(qemu_iops "$wr" "$depth" "$fi_")")
  done
  om=$(echo "${o[*]}" | median)
  fm=$(echo "${f[*]}" | median)
  qm=$( ( [[ $QEMU == 1 ]] && echo "${q[*]}" || echo 0) | median)
  printf '%-18s %10s %10s %10s %9s %9s   (ours: %s; fio: %s; qemu: %s)\n' "$rw-4k-qd$depth" "$om" "$fm" "$qm" \
    "$(python3 -c "print('%.3fx' % ($om / $fm))")" \
    "$(python3 -c "print('%.3fx' % ($om / $qm) if $qm else '-')")" "${o[*]}" "${f[*]}" "${q[*]:-}"
done
