#!/bin/bash
# ublk under load, inside the VM (2 vCPUs):
#  1. fio random writes then reads with crc32c verification, depth 32, on
#     2 hardware queues (one fio job pinned to each CPU, so both queues carry
#     I/O; the kernel's per-queue dispatch counters prove it), for every data
#     path (kernel copy, NEED_GET_DATA, USER_COPY);
#  2. crash and recover: kill -9 the daemon while fio writes with verify,
#     start it again with the same id; the same /dev/ublkb0 carries on and
#     fio's verification passes across the crash;
#  3. removal with I/O in flight: the export is removed through the control
#     socket under fio; fio gets errors, the device goes away, the daemon
#     lives on and serves a new device; then SIGTERM under load exits cleanly.
source "$(dirname "$0")/daemon_lib.sh"
vm_modprobe ublk_drv
img=$SCRATCH/disk.img
truncate -s 512M "$img"

fio_verify() {  # fio_verify DEV NAME [extra fio args]: write+verify, 2 jobs on 2 CPUs
  local dev=$1 name=$2; shift 2
  fio --name="$name" --filename="$dev" --direct=1 --ioengine=io_uring --iodepth=32 --bs=4k \
    --rw=randwrite --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --numjobs=2 --offset_increment=128M --cpus_allowed_policy=split --cpus_allowed=0-1 \
    --group_reporting --output-format=terse --terse-version=3 "$@" >"$SCRATCH/fio-$name.out" \
    || { cat "$SCRATCH/fio-$name.out" >&2; return 1; }
}

queue_requests() {  # requests completed by hardware queue $1 of the first export
  ctl '{"cmd":"stats"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["queue_requests"][int(sys.argv[1])])' "$1"
}

for copy in kernel get-data user; do
  log "fio crc32c verify, depth 32, 2 queues, copy=$copy"
  start_daemon --threads 2 --blockdev "io_uring,id=d0,path=$img" \
    --export "ublk,blockdev=d0,id=0,copy=$copy,queues=2,depth=64"
  wait_for_block /dev/ublkb0
  [ "$(ls /sys/block/ublkb0/mq | wc -l)" = 2 ] || fail "expected 2 hardware queues"
  fio_verify /dev/ublkb0 "verify-$copy" || fail "fio verify failed (copy=$copy)"
  q0=$(queue_requests 0) q1=$(queue_requests 1)
  echo "   requests per hardware queue: $q0 $q1"
  [ "$q0" -gt 1000 ] && [ "$q1" -gt 1000 ] || fail "both hardware queues should carry I/O ($q0, $q1)"
  [ "$(export_stat errors)" = 0 ] || fail "the export counted errors"
  stop_daemon || fail "daemon exit status"
  [ ! -e /dev/ublkb0 ] || fail "device left behind"
done

log "crash and recover under fio verify"
start_daemon --threads 2 --blockdev "io_uring,id=d0,path=$img" \
  --export "ublk,blockdev=d0,id=0,queues=2,depth=64,recovery=on"
wait_for_block /dev/ublkb0
fio --name=crash --filename=/dev/ublkb0 --direct=1 --ioengine=io_uring --iodepth=32 --bs=4k \
  --rw=randwrite --size=64M --verify=crc32c --verify_fatal=1 --do_verify=1 --numjobs=2 \
  --offset_increment=192M --cpus_allowed_policy=split --cpus_allowed=0-1 --group_reporting \
  --output-format=terse --terse-version=3 >"$SCRATCH/fio-crash.out" 2>&1 &
fio_pid=$!
sleep 3
kill -0 $fio_pid 2>/dev/null || { cat "$SCRATCH/fio-crash.out"; fail "fio ended before the crash"; }
old=$DAEMON_PID
kill_daemon
log "killed daemon $old with fio running; restarting"
sleep 1
[ -b /dev/ublkb0 ] || fail "the device went away with its server"
start_daemon --threads 2 --blockdev "io_uring,id=d0,path=$img" \
  --export "ublk,blockdev=d0,id=0,queues=2,depth=64,recovery=on"
grep -q 'recovered=true' "$SCRATCH/daemon.log" || fail "the new daemon did not recover the device"
wait $fio_pid || { cat "$SCRATCH/fio-crash.out" >&2; fail "fio failed across the crash"; }
echo "   fio wrote and verified 2 x 64 MiB across the crash"
# And the data is on the image: read back through a fresh fio verify-only run.
fio --name=crash --filename=/dev/ublkb0 --direct=1 --ioengine=io_uring --iodepth=32 --bs=4k \
  --rw=randwrite --size=64M --verify=crc32c --verify_fatal=1 --verify_only=1 --numjobs=2 \
  --offset_increment=192M --group_reporting --output-format=terse >/dev/null \
  || fail "data written before and after the crash does not verify"
stop_daemon || fail "daemon exit status after recovery"

log "removal with I/O in flight"
start_daemon --threads 2 --blockdev "io_uring,id=d0,path=$img" \
  --export "ublk,blockdev=d0,id=0,queues=2,depth=64"
wait_for_block /dev/ublkb0
fio --name=busy --filename=/dev/ublkb0 --direct=1 --ioengine=io_uring --iodepth=32 --bs=4k \
  --rw=randrw --numjobs=2 --time_based --runtime=60 --size=256M >"$SCRATCH/fio-busy.out" 2>&1 &
fio_pid=$!
sleep 2
reply=$(ctl '{"cmd":"remove-export","id":"ublk0"}')
echo "   remove-export: $reply"
case $reply in *'"ok":true'*) ;; *) fail "remove-export failed: $reply" ;; esac
timeout 60 tail --pid=$fio_pid -f /dev/null || fail "fio hung after the device was removed"
for _ in $(seq 50); do [ -e /dev/ublkb0 ] || break; sleep 0.1; done
[ ! -e /dev/ublkb0 ] || fail "the device is still there"
kill -0 "$DAEMON_PID" || fail "the daemon died"
ctl '{"cmd":"list-exports"}' | grep -q '"exports":\[\]' || fail "the export is still listed"
# The daemon serves a new device afterwards, and SIGTERM under load is clean.
ctl '{"cmd":"add-export","spec":"ublk,blockdev=d0,id=1,queues=2,depth=64"}' | grep -q '"ok":true' \
  || fail "add-export after removal failed"
wait_for_block /dev/ublkb1
fio --name=busy2 --filename=/dev/ublkb1 --direct=1 --ioengine=io_uring --iodepth=32 --bs=4k \
  --rw=randrw --numjobs=2 --time_based --runtime=60 --size=256M >/dev/null 2>&1 &
fio_pid=$!
sleep 2
stop_daemon || fail "daemon exit status on SIGTERM under load"
timeout 60 tail --pid=$fio_pid -f /dev/null || fail "fio hung after SIGTERM"
[ ! -e /dev/ublkb1 ] || fail "the device is still there after SIGTERM"
echo "ublk_io ok"
