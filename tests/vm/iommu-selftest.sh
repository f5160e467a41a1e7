#!/bin/bash
# The emulated Intel vIOMMU works: DMA remapping is on, the NVMe and
# virtio-blk disks sit in translated IOMMU groups and do I/O through them, and
# an NVMe controller can be handed to vfio-pci (what a userspace NVMe driver
# needs). Run it as host-selftest.sh iommu does:
#   tests/vm/run-in-vm.sh --iommu --new-disk 64M:nvme:serial=iommu-nvme \
#     --new-disk 64M:nvme:serial=iommu-vfio \
#     --new-disk 64M:virtio-blk:serial=iommu-vblk tests/vm/iommu-selftest.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
vm_require_vm

vm_check "intel_iommu=on is on the command line" grep -qw intel_iommu=on /proc/cmdline
have_dmar() { compgen -G '/sys/class/iommu/dmar*' >/dev/null; }
vm_check "a DMAR unit is registered" have_dmar

group_type() { # the IOMMU domain type of the PCI function behind block device $1
  local p
  p=$(readlink -f "/sys/block/${1#/dev/}/device")
  while [ "$p" != / ] && [ ! -e "$p/iommu_group" ]; do p=$(dirname "$p"); done
  cat "$p/iommu_group/type"
}
translated() { case "$(group_type "$1")" in DMA|DMA-FQ) return 0 ;; *) return 1 ;; esac; }

NVME=$(vm_nvme_dev iommu-nvme)
VBLK=$(vm_virtio_blk_dev iommu-vblk)
for d in "$NVME" "$VBLK"; do
  echo "$d: IOMMU domain $(group_type "$d")"
  vm_check "$d is behind a translating IOMMU domain" translated "$d"
  dd if=/dev/urandom of=/tmp/data bs=1M count=8 status=none
  dd if=/tmp/data of="$d" bs=1M oflag=direct status=none
  echo 3 >/proc/sys/vm/drop_caches
  vm_check "$d reads back through the IOMMU" cmp -n $((8 << 20)) /tmp/data "$d"
done

vm_log "vfio-pci"
vm_modprobe vfio-pci
CTRL=$(vm_nvme_ctrl iommu-vfio)
PCI=$(basename "$(readlink -f "/sys/class/nvme/$CTRL/device")")
GROUP=$(basename "$(readlink -f "/sys/bus/pci/devices/$PCI/iommu_group")")
echo "iommu-vfio is $CTRL at $PCI, IOMMU group $GROUP"
echo "$PCI" >"/sys/bus/pci/devices/$PCI/driver/unbind"
echo vfio-pci >"/sys/bus/pci/devices/$PCI/driver_override"
echo "$PCI" >/sys/bus/pci/drivers_probe
vm_check "$PCI is bound to vfio-pci" test "$(basename "$(readlink -f "/sys/bus/pci/devices/$PCI/driver")")" = vfio-pci
vm_wait_for "/dev/vfio/$GROUP"
vm_check "/dev/vfio/$GROUP is a char device" test -c "/dev/vfio/$GROUP"
echo "iommu selftest ok"
