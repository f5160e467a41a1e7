#!/usr/bin/env bash
# Runs a script inside a VM booted from Debian trixie's kernel, with the host's
# / as its root (read-only 9p + tmpfs overlay), so every host tool and this
# build work inside unchanged. The script's output streams here and its exit
# status becomes ours (125: the VM itself failed; 124: timeout).
#
# Usage: tests/vm/run-in-vm.sh [--mem MB] [--cpus N] [--timeout SECONDS]
#            [--append KERNEL_ARGS] [--qemu ARG]... [--disk FILE[:MODEL[:OPTS]]]...
#            SCRIPT [ARGS...]
#   --disk img.raw:nvme         an emulated NVMe disk (also virtio-blk, nvme-zoned)
#   --qemu -device --qemu intel-iommu   any extra QEMU argument, one per --qemu
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MEM=2048 CPUS=2 TIMEOUT=600 APPEND="" QEMU_EXTRA=() DISKS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) MEM=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --append) APPEND="$APPEND $2"; shift 2 ;;
    --qemu) QEMU_EXTRA+=("$2"); shift 2 ;;
    --disk) DISKS+=("$2"); shift 2 ;;
    --) shift; break ;;
    -*) echo "run-in-vm: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $0 [options] SCRIPT [ARGS...]" >&2; exit 2; }
SCRIPT=$(readlink -f "$1"); shift

LAB=$("$HERE/lab.sh")
VER=$(cat "$LAB/kernel.stamp")
OUT=$(mktemp -d /tmp/blkstack-vm.XXXXXX)
QEMU_PID=""
cleanup() {
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

# The script runs in the current directory, with its arguments.
{
  printf 'exec bash %q' "$SCRIPT"
  for a in "$@"; do printf ' %q' "$a"; done
  printf '\n'
} >"$OUT/script"
pwd >"$OUT/cwd"

if [ -w /dev/kvm ]; then
  ACCEL=(-accel kvm -cpu host)
else
  ACCEL=(-accel tcg,thread=multi -cpu max)
fi

DRIVES=()
n=0
for d in "${DISKS[@]:-}"; do
  [ -n "$d" ] || continue
  IFS=: read -r file model opts <<<"$d"
  model=${model:-virtio-blk}
  DRIVES+=(-drive "file=$file,if=none,id=d$n,format=raw,cache=unsafe")
  case "$model" in
    nvme) DRIVES+=(-device "nvme,drive=d$n,serial=blkstack$n${opts:+,$opts}") ;;
    nvme-zoned)
      DRIVES+=(-device "nvme,id=nvme$n,serial=blkstack$n")
      DRIVES+=(-device "nvme-ns,drive=d$n,bus=nvme$n,zoned=true,zoned.zone_size=8M${opts:+,$opts}") ;;
    *) DRIVES+=(-device "$model,drive=d$n${opts:+,$opts}") ;;
  esac
  n=$((n + 1))
done

set +e
timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 -M q35 "${ACCEL[@]}" -m "$MEM" -smp "$CPUS" \
  -kernel "$LAB/kernel/boot/vmlinuz-$VER" -initrd "$LAB/initrd.img" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 blkstack.kver=$VER blkstack.moddir=$LAB/kernel/lib/modules/$VER $APPEND" \
  -nographic -no-reboot -nodefaults -serial stdio \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
  -virtfs "local,path=$OUT,mount_tag=out,security_model=none" \
  -device virtio-rng-pci \
  "${DRIVES[@]}" "${QEMU_EXTRA[@]}" </dev/null
qrc=$?
set -e
if [ -f "$OUT/rc" ]; then
  exit "$(cat "$OUT/rc")"
fi
[ $qrc -eq 124 ] && { echo "run-in-vm: timed out after ${TIMEOUT}s" >&2; exit 124; }
echo "run-in-vm: the VM ended without running the script (qemu status $qrc)" >&2
exit 125
