#!/bin/bash
# The guest half of vhost_user_guest.sh (runs INSIDE the VM; the host started
# the vhost-user-blk server and gave QEMU a vhost-user-blk-pci device on it).
#
# Environment (from the host wrapper):
#   VHU_SIZE      the disk's size in bytes (how the disk is found: no serial
#                 through vhost-user)
#   VHU_QUEUES    the num-queues the device was given
#   VHU_PATTERN   a host file of random bytes (read over 9p), written at
#   VHU_PAT_OFF   this offset in MiB, with O_DIRECT
#   VHU_FS_MIB    size of the ext4 file system made at offset 0
# Results for the host in $VM_OUT: disk (the device name), fs.sha256 (the
# files written to the file system).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
vm_require_vm
: "${VHU_SIZE:?}" "${VHU_QUEUES:?}" "${VHU_PATTERN:?}" "${VHU_PAT_OFF:?}" "${VHU_FS_MIB:?}"

vm_modprobe virtio_blk
# The vhost-user-blk-pci disk: the only /dev/vd* of VHU_SIZE bytes.
dev=""
for _ in $(seq 100); do
  for b in /sys/block/vd*; do
    [ -e "$b/size" ] || continue
    if [ $(($(cat "$b/size") * 512)) = "$VHU_SIZE" ]; then
      [ -z "$dev" ] || [ "$dev" = "/dev/${b##*/}" ] || vm_fail "two virtio disks of $VHU_SIZE bytes"
      dev=/dev/${b##*/}
    fi
  done
  [ -n "$dev" ] && break
  sleep 0.1
done
[ -n "$dev" ] || { ls -l /sys/block >&2; vm_fail "no virtio-blk disk of $VHU_SIZE bytes"; }
vm_wait_for "$dev" 10
name=${dev#/dev/}
echo "$name" >"$VM_OUT/disk"
vm_log "vhost-user-blk disk: $dev ($VHU_SIZE bytes), vendor $(cat /sys/block/$name/device/vendor 2>/dev/null || echo ?)"
nq=$(ls -d /sys/block/$name/mq/* | wc -l)
vm_check "$VHU_QUEUES hardware queues (found $nq)" [ "$nq" = "$VHU_QUEUES" ]
vm_check "writable (ro=0)" [ "$(cat /sys/block/$name/ro)" = 0 ]

# 1. A random pattern with O_DIRECT, read back with O_DIRECT.
pat_mib=$(($(stat -c %s "$VHU_PATTERN") >> 20))
vm_log "dd ${pat_mib} MiB of random data at ${VHU_PAT_OFF} MiB, O_DIRECT"
dd if="$VHU_PATTERN" of="$dev" bs=1M seek="$VHU_PAT_OFF" oflag=direct conv=fsync status=none ||
  vm_fail "dd to $dev failed"
dd if="$dev" of=/var/tmp/readback bs=1M skip="$VHU_PAT_OFF" count="$pat_mib" iflag=direct status=none ||
  vm_fail "dd from $dev failed"
vm_check "O_DIRECT read-back equals the pattern" cmp -s "$VHU_PATTERN" /var/tmp/readback
# Small direct I/O off the MiB grid: the pattern's first 3 4-KiB blocks
# written again 7 blocks further (the host expects exactly this).
dd if="$VHU_PATTERN" of="$dev" bs=4k count=3 seek=$(((VHU_PAT_OFF << 8) + 7)) oflag=direct conv=notrunc,fsync status=none
dd if="$dev" of=/var/tmp/rb4k bs=4k count=3 skip=$(((VHU_PAT_OFF << 8) + 7)) iflag=direct status=none
dd if="$VHU_PATTERN" of=/var/tmp/want4k bs=4k count=3 status=none   # (no /dev/fd without udev: no <(...))
vm_check "4 KiB O_DIRECT write/read at an odd offset" cmp -s /var/tmp/rb4k /var/tmp/want4k

# Write-zeroes (BLKZEROOUT: VIRTIO_BLK_T_WRITE_ZEROES when offered, else
# writes) over 4 MiB of random data at VHU_ZERO_OFF MiB; discard (fstrim
# below, blkdiscard here) must succeed.
if [ -n "${VHU_ZERO_OFF:-}" ]; then
  dd if="$VHU_PATTERN" of="$dev" bs=1M count=4 seek="$VHU_ZERO_OFF" oflag=direct conv=fsync status=none
  vm_check "blkdiscard -z (write zeroes) 4 MiB at ${VHU_ZERO_OFF} MiB" \
    blkdiscard -z -o $((VHU_ZERO_OFF << 20)) -l $((4 << 20)) "$dev"
  dd if="$dev" of=/var/tmp/zeros bs=1M count=4 skip="$VHU_ZERO_OFF" iflag=direct status=none
  head -c $((4 << 20)) /dev/zero >/var/tmp/zeros.want
  vm_check "the zeroed range reads back as zeros" cmp -s /var/tmp/zeros /var/tmp/zeros.want
  if [ "$(cat /sys/block/$name/queue/discard_max_bytes)" != 0 ]; then
    vm_check "blkdiscard 4 MiB at $((VHU_ZERO_OFF + 4)) MiB" \
      blkdiscard -o $(((VHU_ZERO_OFF + 4) << 20)) -l $((4 << 20)) "$dev"
  fi
fi

# 2. ext4 in the first VHU_FS_MIB MiB: write, sync, remount, verify, fsck.
vm_log "mkfs.ext4 (${VHU_FS_MIB} MiB), mount, write, verify, fsck"
mkfs.ext4 -q -F "$dev" "${VHU_FS_MIB}M" || vm_fail "mkfs.ext4 failed"
mnt=/var/tmp/mnt
mkdir -p "$mnt"
mount "$dev" "$mnt" || vm_fail "mount failed"
for i in 1 2 3 4; do head -c 8M /dev/urandom >"$mnt/f$i"; done
mkdir "$mnt/dir"
for i in $(seq 50); do echo "file $i" >"$mnt/dir/small$i"; done
(cd "$mnt" && sha256sum f1 f2 f3 f4 >"$VM_OUT/fs.sha256")
sync
umount "$mnt"
echo 3 >/proc/sys/vm/drop_caches
mount "$dev" "$mnt" || vm_fail "second mount failed"
vm_check "file contents after remount" bash -c "cd '$mnt' && sha256sum -c --quiet '$VM_OUT/fs.sha256'"
vm_check "50 small files" [ "$(cat "$mnt"/dir/small* | wc -l)" = 50 ]
if [ "$(cat /sys/block/$name/queue/discard_max_bytes)" != 0 ]; then
  vm_check "fstrim (discard through the file system)" fstrim "$mnt"
fi
umount "$mnt"
vm_check "e2fsck -f -n clean" e2fsck -f -n "$dev"
# The pattern past the file system survived mkfs and the writes.
dd if="$dev" of=/var/tmp/readback bs=1M skip="$VHU_PAT_OFF" count="$pat_mib" iflag=direct status=none
cp "$VHU_PATTERN" /var/tmp/expect
dd if="$VHU_PATTERN" of=/var/tmp/expect bs=4k count=3 seek=7 conv=notrunc status=none
vm_check "the pattern is intact after the file system work" cmp -s /var/tmp/expect /var/tmp/readback
# A flush reaches the server (and it answers it).
vm_check "blkdev flush" blockdev --flushbufs "$dev"
echo "vhost_user_guest: guest side ok"
