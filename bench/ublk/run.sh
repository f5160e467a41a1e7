#!/usr/bin/env bash
# ublk benchmark in the VM lab: the kernel's loop driver vs ublk over
# blkstack's io_uring driver on the same file, plus ublk over the null driver.
#   bench/ublk/run.sh [--cpus N] [--seconds S] [--rounds R] [--fs tmpfs|ext4]
# --fs: where the image lives: the VM's tmpfs (default) or ext4 on an
# emulated virtio-blk disk (page cache warm).
# Builds nothing: run scripts/build.sh first. KVM is used where /dev/kvm
# exists; under TCG absolute numbers are tiny, the ratios are what count.
set -euo pipefail
cd "$(dirname "$0")/../.."
CPUS=2 SECS=8 ROUNDS=2 FS=tmpfs
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpus) CPUS=$2; shift ;;
    --seconds) SECS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --fs) FS=$2; shift ;;
    *) echo "usage: $0 [--cpus N] [--seconds S] [--rounds R] [--fs tmpfs|ext4]" >&2; exit 2 ;;
  esac
  shift
done
disk=()
case $FS in
  tmpfs) ;;
  ext4) disk=(--new-disk 2G:virtio-blk:serial=bench-disk) ;;
  *) echo "--fs must be tmpfs or ext4" >&2; exit 2 ;;
esac
exec tests/vm/run-in-vm.sh --cpus "$CPUS" --mem 4096 --timeout 1800 "${disk[@]}" --env BENCH_FS="$FS" \
  --env BLKSTACK_BUILD_DIR="$PWD/build" --env BENCH_SECONDS="$SECS" --env BENCH_ROUNDS="$ROUNDS" \
  --env BENCH_QUEUES="$CPUS" bench/ublk/in_vm.sh
