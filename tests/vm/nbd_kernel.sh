#!/bin/bash
# The kernel's own NBD client (nbd.ko + nbd-client) against `blkstack serve`:
# two connections (multi-conn), mkfs.ext4, mount, write and verify files,
# fsck, discard; flushes from the file system reach the daemon; clean
# disconnect; the daemon exits cleanly. The image lives on a tmpfs, so the
# kernel's large reads (simple replies) take the zero-copy (spliced) path.
source "$(dirname "$0")/daemon_lib.sh"
vm_modprobe nbd
mkdir -p "$SCRATCH/shm"
mount -t tmpfs -o size=1100M tmpfs "$SCRATCH/shm" || fail "cannot mount a tmpfs"
img=$SCRATCH/shm/disk.img
truncate -s 1G "$img"
start_daemon --threads 2 --blockdev "io_uring,id=d0,path=$img" \
  --export "nbd,blockdev=d0,name=disk,tcp=127.0.0.1:10809"
nbd-client -N disk -C 2 127.0.0.1 10809 /dev/nbd0 -b 4096 || fail "nbd-client could not connect"
wait_for_block /dev/nbd0
for _ in $(seq 50); do [ "$(cat /sys/block/nbd0/size)" != 0 ] && break; sleep 0.1; done
[ "$(cat /sys/block/nbd0/size)" = $((1 << 21)) ] || fail "wrong size $(cat /sys/block/nbd0/size)"
[ "$(export_stat connections)" = 2 ] || fail "expected 2 connections, the daemon has $(export_stat connections)"
[ "$(cat /sys/block/nbd0/queue/write_cache)" = "write back" ] || fail "flush not advertised"
[ "$(cat /sys/block/nbd0/queue/fua)" = 1 ] || fail "FUA not advertised"

mkfs.ext4 -q -F /dev/nbd0
mkdir -p "$SCRATCH/mnt"
mount /dev/nbd0 "$SCRATCH/mnt"
for i in 1 2 3 4; do head -c 16M /dev/urandom >"$SCRATCH/mnt/f$i"; done
(cd "$SCRATCH/mnt" && sha256sum f* >"$SCRATCH/sums")
sync
flushes=$(export_stat flushes)
[ "$flushes" -gt 0 ] || fail "no flush reached the daemon after sync"
umount "$SCRATCH/mnt"
echo 3 >/proc/sys/vm/drop_caches
mount /dev/nbd0 "$SCRATCH/mnt"
(cd "$SCRATCH/mnt" && sha256sum -c --quiet "$SCRATCH/sums") || fail "file contents changed"
fstrim "$SCRATCH/mnt" || fail "fstrim (NBD_CMD_TRIM) failed"
umount "$SCRATCH/mnt"
e2fsck -f -n /dev/nbd0 >/dev/null 2>&1 || fail "fsck found errors"
echo "   requests=$(export_stat requests) flushes=$(export_stat flushes) fua_writes=$(export_stat fua_writes) errors=$(export_stat errors) spliced_reads=$(export_stat spliced_reads)"
[ "$(export_stat errors)" = 0 ] || fail "the export counted errors"
[ "$(export_stat spliced_reads)" -gt 0 ] || fail "no read took the zero-copy path"
nbd-client -d /dev/nbd0
for _ in $(seq 50); do [ "$(export_stat connections)" = 0 ] && break; sleep 0.1; done
[ "$(export_stat connections)" = 0 ] || fail "connections left after disconnect"
stop_daemon || fail "daemon exit status"
# The image holds the file system.
e2fsck -f -n "$img" >/dev/null 2>&1 || fail "the image does not hold a clean file system"
umount "$SCRATCH/shm"
echo "nbd_kernel ok"
