#!/bin/bash
# What the kernel is told about a ublk device comes from the library device:
# block sizes, capacity, transfer limit, queues and depth, cache and FUA,
# discard and write-zeroes, read-only. Checked in sysfs, as every user of the
# block device sees it. A start that fails after ADD_DEV leaves no device.
source "$(dirname "$0")/daemon_lib.sh"
vm_modprobe ublk_drv
q=/sys/block/ublkb0/queue
expect() {  # expect FILE VALUE
  local got; got=$(cat "$1")
  [ "$got" = "$2" ] || fail "$1 is '$got', want '$2'"
}
gone() { for _ in $(seq 100); do [ -e /dev/ublkb0 ] || [ -e /dev/ublkc0 ] || return 0; sleep 0.05; done; return 1; }

cpus=$(nproc)
log "null device, 4 KiB blocks, $((cpus + 1)) queues asked on $cpus CPUs, depth 4096, 256 KiB transfers"
start_daemon --threads 2 --blockdev "null,id=n0,size=$((3 << 30)),block-size=4096" \
  --export "ublk,blockdev=n0,id=0,queues=$((cpus + 1)),depth=4096,max-io=262144"
wait_for_block /dev/ublkb0
expect $q/logical_block_size 4096
expect $q/physical_block_size 4096
expect /sys/block/ublkb0/size $(((3 << 30) / 512))
expect $q/max_hw_sectors_kb 256
# The kernel gives at most one queue per CPU; the daemon serves what it got.
[ "$(ls /sys/block/ublkb0/mq | wc -l)" = "$cpus" ] || fail "want $cpus hardware queues: $(ls /sys/block/ublkb0/mq)"
grep -q "has $cpus queues (asked for $((cpus + 1))" "$SCRATCH/daemon.log" || fail "the queue count the kernel chose is not logged"
expect /sys/block/ublkb0/mq/0/nr_tags 4096
expect /sys/block/ublkb0/ro 0
# 512-byte I/O is refused by the block layer: the device only takes 4 KiB.
if dd if=/dev/zero of=/dev/ublkb0 bs=512 count=1 oflag=direct status=none 2>/dev/null; then
  fail "a 512-byte direct write went through a 4 KiB device"
fi
dd if=/dev/zero of=/dev/ublkb0 bs=4096 count=1 oflag=direct status=none || fail "4 KiB direct write"
stop_daemon || fail "daemon exit status"
gone || fail "device left behind"

log "file: volatile cache with native FUA, discard, write zeroes"
img=$SCRATCH/disk.img
truncate -s 256M "$img"
start_daemon --blockdev "io_uring,id=d0,path=$img" --export "ublk,blockdev=d0,id=0,queues=1"
wait_for_block /dev/ublkb0
expect $q/write_cache "write back"
expect $q/fua 1
expect $q/logical_block_size 512
[ "$(cat $q/discard_max_bytes)" -gt 0 ] || fail "no discard"
[ "$(cat $q/write_zeroes_max_bytes)" -gt 0 ] || fail "no write zeroes"
expect /sys/block/ublkb0/size $(((256 << 20) / 512))
stop_daemon || fail "daemon exit status"
gone || fail "device left behind"

log "read-only device"
start_daemon --blockdev "io_uring,id=d0,path=$img,read-only=true" --export "ublk,blockdev=d0,id=0,queues=1"
wait_for_block /dev/ublkb0
expect /sys/block/ublkb0/ro 1
expect $q/discard_max_bytes 0
if dd if=/dev/zero of=/dev/ublkb0 bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
  fail "a write to a read-only device went through"
fi
dd if=/dev/ublkb0 of=/dev/null bs=4096 count=16 iflag=direct status=none || fail "read from the read-only device"
stop_daemon || fail "daemon exit status"
gone || fail "device left behind"

log "parameters the kernel refuses: the device added for them is deleted"
# 8 KiB logical blocks are more than a page: SET_PARAMS fails after ADD_DEV.
if "$BLKSTACK" serve --blockdev "null,id=n0,size=$((1 << 30)),block-size=8192" \
    --export "ublk,blockdev=n0,id=0" >"$SCRATCH/refused.log" 2>&1; then
  fail "a device with 8 KiB logical blocks was started"
fi
cat "$SCRATCH/refused.log" >&2
grep -q "SET_PARAMS" "$SCRATCH/refused.log" || fail "the error does not say which step failed"
gone || fail "the device added before the failure was left behind"
[ -z "$(ls /dev/ublkc* /dev/ublkb* 2>/dev/null)" ] || fail "ublk devices left: $(ls /dev/ublk*)"
log "PASS"
