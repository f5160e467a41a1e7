#!/bin/bash
# The lab works: kernel modules load, emulated NVMe shows up, file systems can
# be made and checked, and this build is visible. Run with an NVMe disk:
#   tests/vm/run-in-vm.sh --disk IMG:nvme tests/vm/selftest.sh
set -euo pipefail
echo "kernel $(uname -r)"
for m in ublk_drv nbd vduse vhost_vdpa loop nvme; do
  modprobe "$m"
  echo "module $m loaded"
done
test -c /dev/ublk-control
test -b /dev/nbd0
test -c /dev/vduse/control
for i in $(seq 50); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
test -b /dev/nvme0n1
test -c /dev/ng0n1
mkfs.ext4 -q -F /dev/nvme0n1
mkdir -p /mnt/t
mount /dev/nvme0n1 /mnt/t
head -c 4M /dev/urandom >/mnt/t/f
sum1=$(sha256sum </mnt/t/f)
umount /mnt/t
mount /dev/nvme0n1 /mnt/t
sum2=$(sha256sum </mnt/t/f)
umount /mnt/t
[ "$sum1" = "$sum2" ]
e2fsck -f -n /dev/nvme0n1
echo "selftest ok"
