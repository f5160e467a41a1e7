#!/bin/bash
# The lab works: the trixie kernel's modules load (ublk_drv, nbd, vduse,
# vhost_vdpa, nvme, ...), emulated NVMe (plain and zoned) and virtio-blk disks
# show up, io_uring (also NVMe passthrough) and file systems work on them, NBD
# works over TCP on loopback, and files written to $VM_OUT reach the host.
# Run it with exactly these disks (host-selftest.sh selftest does):
#   tests/vm/run-in-vm.sh --new-disk 256M:nvme:serial=selftest-nvme \
#     --new-disk 64M:nvme-zoned:serial=selftest-zns \
#     --new-disk 64M:virtio-blk:serial=selftest-vblk --out DIR tests/vm/selftest.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
vm_require_vm

vm_log "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
vm_check "running the lab kernel" test "$(uname -r)" = "$BLKSTACK_VM_KVER"
vm_check "host root is read-only underneath (overlay)" grep -q '^overlay / overlay' /proc/mounts
vm_check "this checkout is visible" test -f "$(dirname "$0")/run-in-vm.sh"

vm_log "modules"
vm_modprobe ublk_drv nbd vduse vdpa vhost_vdpa loop nvme virtio_blk ext4
for m in ublk_drv nbd vduse vdpa vhost_vdpa loop nvme virtio_blk ext4; do
  vm_check "module $m loaded" test -d "/sys/module/$m"
done
vm_check "/dev/ublk-control is a char device" test -c /dev/ublk-control
vm_check "/dev/nbd0 is a block device" test -b /dev/nbd0
vm_check "/dev/vduse/control is a char device" test -c /dev/vduse/control
lo_up() { [ $(($(cat /sys/class/net/lo/flags) & 1)) = 1 ]; }
vm_check "lo is up" lo_up

vm_log "NVMe"
NVME=$(vm_nvme_dev selftest-nvme)
NG=$(vm_nvme_char selftest-nvme)
echo "selftest-nvme is $NVME (char $NG)"
vm_check "/dev/nvme0n1 exists" test -b /dev/nvme0n1
vm_check "/dev/ng0n1 exists" test -c /dev/ng0n1
vm_check "$NVME has 256 MiB" test "$(blockdev --getsize64 "$NVME")" -eq $((256 << 20))
mkfs.ext4 -q -F "$NVME"
mkdir -p /mnt/nvme
mount "$NVME" /mnt/nvme
head -c 8M /dev/urandom >/mnt/nvme/data
sum1=$(sha256sum </mnt/nvme/data)
umount /mnt/nvme
echo 3 >/proc/sys/vm/drop_caches
mount "$NVME" /mnt/nvme
sum2=$(sha256sum </mnt/nvme/data)
umount /mnt/nvme
vm_check "ext4 on NVMe keeps data across a remount" test "$sum1" = "$sum2"
vm_check "e2fsck -f finds the file system clean" e2fsck -f -n "$NVME"
vm_check "fio io_uring randwrite+verify on $NVME" \
  fio --name=uring --filename="$NVME" --ioengine=io_uring --direct=1 --rw=randwrite \
      --bs=4k --iodepth=16 --size=16M --verify=crc32c --do_verify=1 --eta=never --output=/tmp/fio-uring.txt
vm_check "fio io_uring_cmd (NVMe passthrough) on $NG" \
  fio --name=pt --filename="$NG" --ioengine=io_uring_cmd --cmd_type=nvme --rw=randread \
      --bs=4k --iodepth=16 --size=8M --eta=never --output=/tmp/fio-pt.txt

vm_log "zoned NVMe"
ZNS=$(vm_nvme_dev selftest-zns)
echo "selftest-zns is $ZNS"
vm_check "$ZNS is host-managed" test "$(cat "/sys/block/${ZNS#/dev/}/queue/zoned")" = host-managed
vm_check "$ZNS has 8 zones of 8 MiB" test "$(blkzone report "$ZNS" | wc -l)" -eq 8
dd if=/dev/urandom of=/tmp/zone-data bs=64k count=16 status=none
dd if=/tmp/zone-data of="$ZNS" bs=64k oflag=direct status=none
vm_check "sequential write to zone 0 reads back" cmp -n $((1 << 20)) /tmp/zone-data "$ZNS"
vm_check "zone 0 write pointer advanced by 1 MiB" \
  test "$(blkzone report -c 1 "$ZNS" | sed -n 's/.*wptr 0x\([0-9a-f]*\).*/\1/p')" = 000800

vm_log "virtio-blk"
VBLK=$(vm_virtio_blk_dev selftest-vblk)
echo "selftest-vblk is $VBLK"
dd if=/dev/urandom of=/tmp/vblk-data bs=1M count=4 status=none
dd if=/tmp/vblk-data of="$VBLK" bs=1M oflag=direct status=none
vm_check "virtio-blk data reads back" cmp -n $((4 << 20)) /tmp/vblk-data "$VBLK"

vm_log "loop device"
truncate -s 64M /tmp/loop.img
LOOP=$(losetup -f --show /tmp/loop.img)
mkfs.ext4 -q -F "$LOOP"
vm_check "e2fsck -f on $LOOP" e2fsck -f -n "$LOOP"
losetup -d "$LOOP"

vm_log "NBD over TCP on loopback"
truncate -s 32M /tmp/nbd.img
# --fork returns once the server listens.
qemu-nbd -f raw -b 127.0.0.1 -p 10809 -x selftest -t --fork --pid-file=/tmp/qemu-nbd.pid /tmp/nbd.img
trap 'kill "$(cat /tmp/qemu-nbd.pid)" 2>/dev/null || true' EXIT
nbd-client -N selftest 127.0.0.1 10809 /dev/nbd0 >/dev/null
dd if=/dev/urandom of=/tmp/nbd-data bs=1M count=2 status=none
dd if=/tmp/nbd-data of=/dev/nbd0 bs=1M oflag=direct status=none
vm_check "NBD device reads back what was written" cmp -n $((2 << 20)) /tmp/nbd-data /dev/nbd0
nbd-client -d /dev/nbd0 >/dev/null
vm_check "the NBD server's file has the data" cmp -n $((2 << 20)) /tmp/nbd-data /tmp/nbd.img

vm_log "results back to the host"
{
  echo "kernel=$(uname -r)"
  echo "nvme=$NVME"
  echo "zns=$ZNS"
  echo "virtio_blk=$VBLK"
  echo "status=ok"
} >"$VM_OUT/selftest.result"
cp /tmp/fio-uring.txt "$VM_OUT/"
echo "selftest ok"
