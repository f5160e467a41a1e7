#!/bin/bash
# Runs inside the VM lab (bench/ublk/run.sh starts it): the kernel's loop
# driver vs ublk over blkstack's io_uring driver on the same file, and ublk
# over the null driver (per-I/O overhead of ublk + blkstack alone).
# Interleaved rounds; prints IOPS, MB/s, daemon CPU per I/O and the ratios.
source "$(dirname "$0")/../../tests/vm/daemon_lib.sh"
SECS=${BENCH_SECONDS:-8}
ROUNDS=${BENCH_ROUNDS:-2}
QUEUES=${BENCH_QUEUES:-$(nproc)}
FS=${BENCH_FS:-tmpfs}
vm_modprobe ublk_drv loop
if [ "$FS" = ext4 ]; then
  # ext4 on an emulated virtio-blk disk, the image warm in the page cache:
  # buffered reads are then memory copies that io_uring does inline (ext4
  # supports non-blocking reads), as the loop driver's worker does.
  disk=$(vm_virtio_blk_dev bench-disk)
  mkfs.ext4 -q -F "$disk"
  mkdir -p "$SCRATCH/mnt"
  mount "$disk" "$SCRATCH/mnt"
  trap 'rc=$?; umount "$SCRATCH/mnt" 2>/dev/null; (exit $rc); cleanup_vm' EXIT
  img=$SCRATCH/mnt/bench.img
else
  # tmpfs (the VM's scratch): reads cannot be done without blocking, so
  # io_uring hands each one to an io-wq worker thread.
  img=$SCRATCH/bench.img
fi
head -c 1G /dev/zero | tr '\0' '\1' >"$img"   # fully allocated: no hole shortcuts
cat "$img" >/dev/null
results=$SCRATCH/results
: >"$results"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run_fio DEV WORKLOAD: prints "iops bw_kib ios"
run_fio() {
  local dev=$1 w=$2 args
  case $w in
    randread-4k-qd32) args=(--rw=randread --bs=4k --iodepth=32) ;;
    randread-4k-qd1) args=(--rw=randread --bs=4k --iodepth=1) ;;
    seqread-1m-qd8) args=(--rw=read --bs=1M --iodepth=8) ;;
  esac
  fio --name=b --filename="$dev" --direct=1 --ioengine=io_uring "${args[@]}" --numjobs="$QUEUES" \
    --cpus_allowed_policy=split --cpus_allowed=0-$((QUEUES - 1)) --size=1G --time_based --runtime="$SECS" \
    --group_reporting --output-format=json >"$SCRATCH/fio.json"
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]["read"]; print(j["iops"], j["bw"], j["total_ios"])' "$SCRATCH/fio.json"
}

measure() {  # measure TARGET WORKLOAD DEV [DAEMON_PID]
  local t=$1 w=$2 dev=$3 pid=${4:-} c0=0 c1=0 out
  [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
  out=$(run_fio "$dev" "$w")
  [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
  echo "$t $w $out $((c1 - c0))" >>"$results"
}

for round in $(seq "$ROUNDS"); do
  for w in randread-4k-qd32 randread-4k-qd1 seqread-1m-qd8; do
    log "round $round: $w"
    loopdev=$(losetup --find --show "$img")
    measure loop "$w" "$loopdev"
    losetup -d "$loopdev"
    start_daemon --threads "$QUEUES" --blockdev "io_uring,id=d0,path=$img" \
      --export "ublk,blockdev=d0,id=0,queues=$QUEUES,depth=128"
    wait_for_block /dev/ublkb0
    measure ublk-io_uring "$w" /dev/ublkb0 "$DAEMON_PID"
    stop_daemon
    start_daemon --threads "$QUEUES" --blockdev "null,id=n0,size=$((1 << 30))" \
      --export "ublk,blockdev=n0,id=0,queues=$QUEUES,depth=128"
    wait_for_block /dev/ublkb0
    measure ublk-null "$w" /dev/ublkb0 "$DAEMON_PID"
    stop_daemon
  done
done

python3 - "$results" "$(getconf CLK_TCK)" "$QUEUES" "$SECS" "$ROUNDS" "$FS" <<'PY'
import sys, collections
path, hz, queues, secs, rounds, fs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
acc = collections.defaultdict(lambda: [0.0, 0.0, 0, 0, 0])
for line in open(path):
    t, w, iops, bw, ios, ticks = line.split()
    a = acc[(t, w)]
    a[0] += float(iops); a[1] += float(bw); a[2] += int(ios); a[3] += int(ticks); a[4] += 1
print(f"\nublk benchmark, image on {fs}: {queues} queue(s)/fio job(s), {rounds} round(s) x {secs} s per point, means of the rounds")
print(f"{'workload':<18} {'target':<14} {'IOPS':>10} {'MB/s':>9} {'daemon us/IO':>13} {'vs loop':>8}")
for w in ("randread-4k-qd32", "randread-4k-qd1", "seqread-1m-qd8"):
    loop = acc[("loop", w)]
    for t in ("loop", "ublk-io_uring", "ublk-null"):
        a = acc[(t, w)]
        if not a[4]:
            continue
        iops, mbs = a[0] / a[4], a[1] / a[4] / 1024
        cpu = f"{a[3] / hz * 1e6 / a[2]:.1f}" if t != "loop" and a[2] else "-"
        ratio = f"{iops / (loop[0] / loop[4]):.2f}x" if loop[4] else "-"
        print(f"{w:<18} {t:<14} {iops:>10.0f} {mbs:>9.1f} {cpu:>13} {ratio:>8}")
PY
