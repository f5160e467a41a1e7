#!/usr/bin/env bash
# bench/vhost_user/run.sh - vhost-user-blk, clients and exports side by side,
# in one run, on one tmpfs file (so the device costs next to nothing and the
# numbers are the vhost-user path's):
#  (a) clients, same export (qemu-storage-daemon's):
#        real-bb   libblkio's blkio-bench on REAL libblkio 1.5
#        ours-bb   the same blkio-bench binary on OUR libblkio.so.1
#        real-one  `blkstack bench-one --lib REAL` (our bench engine, dlopen)
#        ours-one  `blkstack bench-one --lib OURS`
#  (b) exports, same client (blkio-bench on real libblkio): qsd vs ours
#  (c) our client on our export (blkio-bench on our libblkio.so.1), against
#      (a)'s real-bb-on-qsd
# Workloads: 4 KiB random read at depth 1 and 32, 1 MiB sequential read at
# depth 8; one queue. Contenders are interleaved; each cell is the median of
# --rounds runs of --seconds. Anything that needs our code before it exists
# prints "n/a (not built)" (detected from the built files, as in
# tests/interop/vhost_user.sh).
#
# Usage: bench/vhost_user/run.sh [--build DIR] [--seconds S] [--rounds N]
#                                [--size MIB] [--server-threads N] [--qsd-aio io_uring|threads|native]
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$SRC/build
SECONDS_PER=3
ROUNDS=3
SIZE_MIB=512
SERVER_THREADS=1
QSD_AIO=io_uring
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) BUILD=$2; shift ;;
    --seconds) SECONDS_PER=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --size) SIZE_MIB=$2; shift ;;
    --server-threads) SERVER_THREADS=$2; shift ;;
    --qsd-aio) QSD_AIO=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
TEST_NAME=vhost-bench
# shellcheck source=../../tests/interop/vhost_lib.sh
source "$SRC/tests/interop/vhost_lib.sh"
VHOST_QSD_AIO=$QSD_AIO
vhost_setup "$BUILD" >&2
# blkstack serve: one reactor by default, as qsd serves from one thread.
VHOST_BLKSTACK_EXTRA="--threads $SERVER_THREADS"

OURS_CLIENT=0 OURS_EXPORT=0
vhost_client_available && OURS_CLIENT=1
vhost_export_available && OURS_EXPORT=1

# The device: a tmpfs file full of data (reads move bytes, not holes).
SHM=$(mktemp -d /dev/shm/blkstack-vhost-bench.XXXXXX)
register_cleanup "rm -rf '$SHM'"
IMG=$SHM/disk.img
head -c $((SIZE_MIB << 20)) /dev/urandom >"$IMG"
QSD_SOCK=$WORK/qsd.sock OUR_SOCK=$WORK/ours.sock
start_qsd_vhost "$IMG" "$QSD_SOCK" 1 >&2

WORKLOADS=("randread 4096 1" "randread 4096 32" "read 1048576 8")
wl_name() { set -- $1; case $1 in randread) echo "randread-4k-qd$3" ;; read) echo "seqread-1m-qd$3" ;; esac; }

bb() {  # CLIENT SOCK RW BS DEPTH -> IOPS
  libblkio_bench_vhost "$1" "$2" "$3" "$4" "$5" "$SECONDS_PER" ||
    die "blkio-bench ($1 libblkio) on $2 failed: $3 bs $4 depth $5"
  echo "$BENCH_IOPS"
}
one() {  # LIB SOCK RW BS DEPTH -> IOPS
  local seq=()
  [[ $3 == read ]] && seq=(--sequential)
  vhost_qsd_retry "$2" timeout -k 5 $((SECONDS_PER + 60)) "$BLKSTACK" bench-one --lib "$1" --driver virtio-blk-vhost-user \
    --prop "path=$2" --seconds "$SECONDS_PER" --bs "$4" --depth "$5" "${seq[@]}" >"$WORK/one.out" ||
    { cat "$WORK/one.out" >&2; die "blkstack bench-one --lib $1 on $2 failed: $3 bs $4 depth $5"; }
  awk '/^IOPS/ {print $2}' "$WORK/one.out"
}
median() { sort -n | awk '{a[NR]=$1} END { if (NR == 0) print "n/a"; else print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.3f\n", a / b }'; }
cell() { [[ $1 == n/a ]] && printf '%16s' "n/a (not built)" || printf '%16.0f' "$1"; }

REAL_LIB=$REAL_LIBDIR/libblkio.so.1.5.0
declare -A R=()   # R[part/contender/workload] = median IOPS

echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "device: ${SIZE_MIB} MiB tmpfs file; qsd: $(qemu-storage-daemon --version | head -1) aio=$QSD_AIO; ${SECONDS_PER} s per run, median of ${ROUNDS}" >&2
echo "our driver: $([[ $OURS_CLIENT == 1 ]] && echo built || echo 'not built')   our export: $([[ $OURS_EXPORT == 1 ]] && echo built || echo 'not built')" >&2

for wl in "${WORKLOADS[@]}"; do
  read -r rw bs depth <<<"$wl"
  name=$(wl_name "$wl")
  log "$name ..." >&2
  for c in a_real_bb a_ours_bb a_real_one a_ours_one b_qsd b_ours c_ours; do : >"$WORK/$c"; done
  for _ in $(seq "$ROUNDS"); do
    # (a) clients on the qsd export
    bb real "$QSD_SOCK" "$rw" "$bs" "$depth" >>"$WORK/a_real_bb"
    one "$REAL_LIB" "$QSD_SOCK" "$rw" "$bs" "$depth" >>"$WORK/a_real_one"
    if [[ $OURS_CLIENT == 1 ]]; then
      bb ours "$QSD_SOCK" "$rw" "$bs" "$depth" >>"$WORK/a_ours_bb"
      one "$BLKSTACK_LIB" "$QSD_SOCK" "$rw" "$bs" "$depth" >>"$WORK/a_ours_one"
    fi
    # (b), (c): our export, started for this run only (qsd idles meanwhile)
    if [[ $OURS_EXPORT == 1 ]]; then
      start_blkstack_vhost "$IMG" "$OUR_SOCK" 1 >&2
      bb real "$OUR_SOCK" "$rw" "$bs" "$depth" >>"$WORK/b_ours"
      [[ $OURS_CLIENT == 1 ]] && bb ours "$OUR_SOCK" "$rw" "$bs" "$depth" >>"$WORK/c_ours"
      stop_vhost_server "$OUR_SOCK"
    fi
  done
  for c in a_real_bb a_ours_bb a_real_one a_ours_one b_ours c_ours; do
    R[$c/$name]=$(median <"$WORK/$c")
  done
  R[b_qsd/$name]=${R[a_real_bb/$name]}
done
[[ $VHOST_QSD_CRASHES -eq 0 ]] ||
  echo "note: qemu-storage-daemon 7.2 hit its known abort $VHOST_QSD_CRASHES time(s); restarted, the run repeated" >&2

printf '\n(a) clients on the same qemu-storage-daemon export (IOPS)\n'
printf '%-18s %16s %16s %8s %16s %16s %8s\n' workload "real blkio-bench" "ours blkio-bench" ours/real "real bench-one" "ours bench-one" ours/real
for wl in "${WORKLOADS[@]}"; do
  n=$(wl_name "$wl")
  printf '%-18s %s %s %8s %s %s %8s\n' "$n" "$(cell "${R[a_real_bb/$n]}")" "$(cell "${R[a_ours_bb/$n]}")" \
    "$(ratio "${R[a_ours_bb/$n]}" "${R[a_real_bb/$n]}")" "$(cell "${R[a_real_one/$n]}")" "$(cell "${R[a_ours_one/$n]}")" \
    "$(ratio "${R[a_ours_one/$n]}" "${R[a_real_one/$n]}")"
done
printf '\n(b) exports, same client (blkio-bench on real libblkio) (IOPS)\n'
printf '%-18s %16s %16s %8s\n' workload "qsd export" "our export" ours/qsd
for wl in "${WORKLOADS[@]}"; do
  n=$(wl_name "$wl")
  printf '%-18s %s %s %8s\n' "$n" "$(cell "${R[b_qsd/$n]}")" "$(cell "${R[b_ours/$n]}")" "$(ratio "${R[b_ours/$n]}" "${R[b_qsd/$n]}")"
done
printf '\n(c) our client on our export vs real libblkio on qsd (blkio-bench) (IOPS)\n'
printf '%-18s %16s %16s %8s\n' workload "real on qsd" "ours on ours" ratio
for wl in "${WORKLOADS[@]}"; do
  n=$(wl_name "$wl")
  printf '%-18s %s %s %8s\n' "$n" "$(cell "${R[a_real_bb/$n]}")" "$(cell "${R[c_ours/$n]}")" "$(ratio "${R[c_ours/$n]}" "${R[a_real_bb/$n]}")"
done
