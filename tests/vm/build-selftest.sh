#!/bin/bash
# This checkout's build runs inside the VM unchanged: `blkstack info` opens an
# emulated NVMe namespace with the io_uring driver and reports its size.
# ctest runs it (vm_build_selftest) with BLKSTACK_BUILD_DIR set and
#   --new-disk 128M:nvme:serial=build-nvme
set -euo pipefail
. "$(dirname "$0")/lib.sh"
vm_require_vm

[ -n "${BLKSTACK_BUILD_DIR:-}" ] || vm_fail "BLKSTACK_BUILD_DIR is not set (run-in-vm.sh --env BLKSTACK_BUILD_DIR=...)"
BLKSTACK=$BLKSTACK_BUILD_DIR/tools/blkstack/blkstack
vm_check "blkstack is built at $BLKSTACK" test -x "$BLKSTACK"

NVME=$(vm_nvme_dev build-nvme)
"$BLKSTACK" info "io_uring,path=$NVME" | tee /tmp/info.txt
capacity=$(awk '$1 == "capacity" { print $2 }' /tmp/info.txt)
vm_check "blkstack sees $NVME's $(blockdev --getsize64 "$NVME") bytes" \
  test "$capacity" = "$(blockdev --getsize64 "$NVME")"
