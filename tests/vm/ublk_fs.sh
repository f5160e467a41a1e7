#!/bin/bash
# ublk over the io_uring driver on a file: a file system made, filled,
# verified and checked; discard and write-zeroes reach the file; FUA writes
# reach the daemon as FUA; clean removal. Runs for each data path.
source "$(dirname "$0")/daemon_lib.sh"
modprobe ublk_drv
for copy in kernel get-data user; do
  log "copy=$copy"
  img=$SCRATCH/disk-$copy.img
  truncate -s 1G "$img"
  start_daemon --threads 2 --blockdev "io_uring,id=d0,path=$img" \
    --export "ublk,blockdev=d0,id=0,copy=$copy,queues=2,depth=64"
  wait_for_block /dev/ublkb0
  [ "$(cat /sys/block/ublkb0/queue/fua)" = 1 ] || fail "FUA not advertised"
  [ "$(cat /sys/block/ublkb0/queue/write_cache)" = "write back" ] || fail "volatile cache not advertised"
  [ "$(cat /sys/block/ublkb0/size)" = $((1 << 21)) ] || fail "wrong size"
  [ "$(cat /sys/block/ublkb0/mq/*/nr_tags | head -1)" = 64 ] || fail "wrong depth"
  [ "$(ls /sys/block/ublkb0/mq | wc -l)" = 2 ] || fail "wrong queue count"

  mkfs.ext4 -q -F -E nodiscard /dev/ublkb0
  mkdir -p "$SCRATCH/mnt"
  mount /dev/ublkb0 "$SCRATCH/mnt"
  for i in 1 2 3 4; do head -c 8M /dev/urandom >"$SCRATCH/mnt/f$i"; done
  (cd "$SCRATCH/mnt" && sha256sum f* >"$SCRATCH/sums")
  umount "$SCRATCH/mnt"
  echo 3 >/proc/sys/vm/drop_caches
  mount /dev/ublkb0 "$SCRATCH/mnt"
  (cd "$SCRATCH/mnt" && sha256sum -c --quiet "$SCRATCH/sums") || fail "file contents changed"
  umount "$SCRATCH/mnt"
  e2fsck -f -n /dev/ublkb0 >/dev/null 2>&1 || fail "fsck found errors"

  # Discard punches holes in the image; write-zeroes zeroes.
  before=$(du -k "$img" | cut -f1)
  blkdiscard -f -o 512M -l 256M /dev/ublkb0
  dd if=/dev/urandom of=/dev/ublkb0 bs=1M seek=800 count=16 oflag=direct status=none
  blkdiscard -f -z -o 800M -l 16M /dev/ublkb0
  dd if=/dev/ublkb0 of="$SCRATCH/zeroed" bs=1M skip=800 count=16 iflag=direct status=none
  cmp -n $((16 << 20)) "$SCRATCH/zeroed" /dev/zero || fail "write zeroes did not zero"
  # FUA writes: O_DSYNC on a device with FUA becomes REQ_FUA.
  fua_before=$(export_stat fua_writes)
  dd if=/dev/urandom of=/dev/ublkb0 bs=4k count=64 seek=100 oflag=direct,dsync status=none
  fua_after=$(export_stat fua_writes)
  [ $((fua_after - fua_before)) -ge 64 ] || fail "FUA writes did not arrive as FUA ($fua_before -> $fua_after)"
  stop_daemon || fail "daemon exit status"
  [ ! -e /dev/ublkb0 ] || fail "the device was not removed on shutdown"
  after=$(du -k "$img" | cut -f1)
  echo "image allocation ${before}K -> ${after}K"
  rm -f "$img"
done
echo "ublk_fs ok"
