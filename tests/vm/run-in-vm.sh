#!/usr/bin/env bash
# Runs SCRIPT inside a VM booted from Debian trixie's kernel whose root is the
# host's own / (read-only 9p + tmpfs overlay): host tools and this checkout
# work inside unchanged, and modprobe finds the trixie modules (ublk_drv, nbd,
# vduse, nvme, ...). SCRIPT runs as root in the current directory; its output
# streams to stdout and its exit status becomes ours.
#
# Usage: tests/vm/run-in-vm.sh [OPTIONS] SCRIPT [ARGS...]
#        tests/vm/run-in-vm.sh [OPTIONS] --shell
# VM:
#   --mem MB               guest memory (default 2048)
#   --cpus N               vCPUs (default 2)
#   --timeout SECONDS      kill the VM and fail with 124 after this (default 600)
#   --append ARGS          extra kernel command line, e.g. nvme.poll_queues=2
#   --machine TYPE         QEMU machine (default q35)
# Devices (serials/ids are blkstack0, blkstack1, ... unless OPTS set them):
#   --disk FILE[:MODEL[:OPTS]]      attach an existing image (raw; .qcow2 too)
#   --new-disk SIZE[:MODEL[:OPTS]]  a fresh sparse raw image (e.g. 256M),
#                                   deleted after the run
#       MODEL: nvme (default)  emulated NVMe controller + namespace
#              nvme-zoned      NVMe with a zoned namespace (ZNS); OPTS go to
#                              the nvme-ns (zoned.zone_size=..., default 8M)
#              virtio-blk      virtio-blk-pci
#              any other QEMU -device model taking drive=
#       OPTS: extra comma-separated -device properties (serial=foo, ...)
#   --iommu                an emulated Intel vIOMMU (q35, intel_iommu=on)
#   --device SPEC          any extra -device SPEC
#   --qemu ARG             any extra QEMU argument (one per --qemu)
# Files and environment:
#   --share DIR            make host DIR writable in the VM, at the same path
#   --out DIR              --share DIR (created if missing), and VM_OUT=DIR
#                          inside; by default VM_OUT is a VM-private directory
#   --env NAME=VALUE       set an environment variable for SCRIPT
#   --log FILE             also save the whole console output to FILE
# Other:
#   --no-coldplug          do not load device drivers at boot (by default
#                          the VM modprobes the drivers of its virtio and
#                          NVMe devices, as udev would)
#   --shell                an interactive bash in the VM instead of a script
#   --verbose              show kernel boot messages and lab setup progress
#   -h, --help             this text
# Exit status: SCRIPT's; 124 if the timeout hit; 125 if the VM ended without
# running SCRIPT to completion (boot failure, kernel panic, QEMU error).
# Environment: BLKSTACK_VM_LAB (lab cache directory), BLKSTACK_VM_ACCEL
# (kvm or tcg; default kvm when /dev/kvm is usable), BLKSTACK_VM_RC_CHANNEL=
# console (report the status through the console marker only: for testing
# that fallback).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=run-in-vm
usage() { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "$PROG: error: $*" >&2; exit 125; }
bad_usage() { echo "$PROG: $*" >&2; echo "(see $0 --help)" >&2; exit 2; }

COLDPLUG=1 MEM=2048 CPUS=2 TIMEOUT=600 APPEND="" MACHINE=q35 IOMMU=0 SHELL_MODE=0 VERBOSE=0
LOGFILE="" OUT_DIR=""
DISKS=() EXTRA=() SHARES=() ENVS=()
need_arg() { [ $# -ge 2 ] || bad_usage "$1 needs an argument"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) need_arg "$@"; MEM=$2; shift ;;
    --cpus) need_arg "$@"; CPUS=$2; shift ;;
    --timeout) need_arg "$@"; TIMEOUT=$2; shift ;;
    --append) need_arg "$@"; APPEND="$APPEND $2"; shift ;;
    --machine) need_arg "$@"; MACHINE=$2; shift ;;
    --disk) need_arg "$@"; DISKS+=("file:$2"); shift ;;
    --new-disk) need_arg "$@"; DISKS+=("new:$2"); shift ;;
    --iommu) IOMMU=1 ;;
    --device) need_arg "$@"; EXTRA+=(-device "$2"); shift ;;
    --qemu) need_arg "$@"; EXTRA+=("$2"); shift ;;
    --share) need_arg "$@"; SHARES+=("$2"); shift ;;
    --out) need_arg "$@"; OUT_DIR=$2; shift ;;
    --env) need_arg "$@"; [[ $2 == [A-Za-z_]*=* ]] || bad_usage "--env wants NAME=VALUE"; ENVS+=("$2"); shift ;;
    --log) need_arg "$@"; LOGFILE=$2; shift ;;
    --no-coldplug) COLDPLUG=0 ;;
    --shell) SHELL_MODE=1 ;;
    --verbose) VERBOSE=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) bad_usage "unknown option $1" ;;
    *) break ;;
  esac
  shift
done
[[ $MEM =~ ^[0-9]+$ ]] || bad_usage "--mem wants megabytes"
[[ $CPUS =~ ^[0-9]+$ ]] || bad_usage "--cpus wants a number"
[[ $TIMEOUT =~ ^[0-9]+$ ]] && [ "$TIMEOUT" -gt 0 ] || bad_usage "--timeout wants seconds"
if [ "$SHELL_MODE" = 0 ]; then
  [ $# -ge 1 ] || bad_usage "no SCRIPT given"
  SCRIPT=$(readlink -f -- "$1") || bad_usage "cannot resolve $1"
  shift
  [ -f "$SCRIPT" ] || bad_usage "no such script: $SCRIPT"
fi

T0=$(date +%s.%N)
secs() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- the lab (kernel + initramfs; built on first use) ------------------------
if [ "$VERBOSE" = 1 ]; then
  LABENV=$("$HERE/lab.sh" --env) || die "lab setup failed"
else
  LABLOG=$(mktemp "${TMPDIR:-/tmp}/blkstack-lab.XXXXXX")
  if ! LABENV=$("$HERE/lab.sh" --env 2>"$LABLOG"); then
    cat "$LABLOG" >&2; rm -f "$LABLOG"; die "lab setup failed"
  fi
  # Say what took time (first run: downloads and builds), nothing otherwise.
  grep -q 'ready in' "$LABLOG" && grep '^vm-lab:' "$LABLOG" >&2
  rm -f "$LABLOG"
fi
eval "$LABENV"

# ---- the run directory: control share, scratch disks, console log -----------
RUN=$(mktemp -d "${TMPDIR:-/tmp}/blkstack-vm.XXXXXX")
CTL=$RUN/ctl
mkdir -p "$CTL"
QPID=""
cleanup() {
  local rc=$?
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
    kill -TERM "$QPID" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$QPID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
  fi
  rm -rf "$RUN"
  return $rc
}
trap cleanup EXIT
trap 'echo "$PROG: interrupted" >&2; exit 130' INT
trap 'echo "$PROG: terminated" >&2; exit 143' TERM HUP

TOKEN=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')

# ---- accelerator --------------------------------------------------------------
# KVM where /dev/kvm is usable, unless an earlier run found that KVM cannot run
# this guest (nested KVM here once stopped the guest kernel with "KVM internal
# error ... emulation failure" on a locked cmpxchg16b and left it paused); the
# verdict is remembered in the lab directory (a cache: delete it to try again).
ACCEL=${BLKSTACK_VM_ACCEL:-}
ACCEL_FORCED=${ACCEL:+1}
KVM_UNUSABLE_MARK=$LAB_DIR/kvm-unusable
if [ -z "$ACCEL" ]; then
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ ! -e "$KVM_UNUSABLE_MARK" ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
set_accel() {
  case "$1" in
    kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
    tcg) ACCEL_ARGS=(-accel tcg,thread=multi -cpu max) ;;
    *) bad_usage "BLKSTACK_VM_ACCEL must be kvm or tcg" ;;
  esac
  ACCEL=$1
}
set_accel "$ACCEL"

# ---- devices ------------------------------------------------------------------
DEV_ARGS=()
MACHINE_ARGS=(-machine "$MACHINE")
if [ "$IOMMU" = 1 ]; then
  [ "$MACHINE" = q35 ] || bad_usage "--iommu needs --machine q35"
  # Interrupt remapping needs the split irqchip under KVM. The vIOMMU must
  # come before the devices it translates for.
  [ "$ACCEL" = kvm ] && MACHINE_ARGS=(-machine q35,kernel-irqchip=split)  # (tcg fallback: see boot)
  DEV_ARGS+=(-device intel-iommu,intremap=on,caching-mode=on)
  APPEND="$APPEND intel_iommu=on"
fi
n=0
for d in "${DISKS[@]}"; do
  kind=${d%%:*} spec=${d#*:}
  IFS=: read -r src model opts <<<"$spec"
  model=${model:-nvme}
  if [ "$kind" = new ]; then
    [[ $src =~ ^[0-9]+[KMGT]?$ ]] || bad_usage "--new-disk wants a size like 256M, got $src"
    file=$RUN/disk$n.img
    truncate -s "$src" "$file"
  else
    file=$(readlink -f -- "$src") && [ -e "$file" ] || bad_usage "--disk: no such file: $src"
  fi
  format=raw
  [[ $file == *.qcow2 ]] && format=qcow2
  DEV_ARGS+=(-drive "file=$file,if=none,id=drive$n,format=$format,cache=unsafe,discard=unmap")
  # serial=blkstackN unless OPTS name one (for nvme-zoned it belongs to the
  # controller, everything else in OPTS to the namespace).
  serial=blkstack$n rest=""
  IFS=, read -ra kv <<<"$opts"
  for o in "${kv[@]}"; do
    case "$o" in serial=*) serial=${o#serial=} ;; "") ;; *) rest="$rest,$o" ;; esac
  done
  case "$model" in
    nvme)
      DEV_ARGS+=(-device "nvme,drive=drive$n,serial=$serial$rest") ;;
    nvme-zoned)
      DEV_ARGS+=(-device "nvme,id=nvme$n,serial=$serial")
      DEV_ARGS+=(-device "nvme-ns,drive=drive$n,bus=nvme$n,nsid=1,zoned=on,zoned.zone_size=8M$rest") ;;
    virtio-blk|virtio-blk-pci)
      [ "$IOMMU" = 1 ] && rest=",disable-legacy=on,iommu_platform=on$rest"
      DEV_ARGS+=(-device "virtio-blk-pci,drive=drive$n,serial=$serial$rest") ;;
    *)
      DEV_ARGS+=(-device "$model,drive=drive$n${opts:+,$opts}") ;;
  esac
  n=$((n + 1))
done

# ---- shares and the control files --------------------------------------------
if [ -n "$OUT_DIR" ]; then
  mkdir -p -- "$OUT_DIR"
  OUT_DIR=$(readlink -f -- "$OUT_DIR")
  SHARES+=("$OUT_DIR")
  ENVS=("VM_OUT=$OUT_DIR" "${ENVS[@]}")
else
  ENVS=("VM_OUT=/run/vm-out" "${ENVS[@]}")
fi
FS_ARGS=(
  -fsdev "local,id=fs_ctl,path=$CTL,security_model=none,multidevs=remap"
  -device virtio-9p-pci,fsdev=fs_ctl,mount_tag=blkctl
  -fsdev "local,id=fs_root,path=/,security_model=none,readonly=on,multidevs=remap"
  -device virtio-9p-pci,fsdev=fs_root,mount_tag=hostroot
)
: >"$CTL/shares"
i=0
for s in "${SHARES[@]}"; do
  p=$(readlink -f -- "$s") && [ -d "$p" ] || bad_usage "--share: no such directory: $s"
  [[ $p == *,* || $p =~ [[:space:]] ]] && bad_usage "--share: commas and spaces in paths are not supported: $p"
  FS_ARGS+=(-fsdev "local,id=fs_share$i,path=$p,security_model=none,multidevs=remap"
            -device "virtio-9p-pci,fsdev=fs_share$i,mount_tag=share$i")
  printf 'share%d %s\n' "$i" "$p" >>"$CTL/shares"
  i=$((i + 1))
done

{
  printf 'KVER=%q\nMODDIR=%q\nTOKEN=%q\nINTERACTIVE=%q\nCOLDPLUG=%q\nRC_CHANNEL=%q\n' \
    "$KVER" "$MODDIR" "$TOKEN" "$SHELL_MODE" "$COLDPLUG" "${BLKSTACK_VM_RC_CHANNEL:-both}"
} >"$CTL/vm.conf"

# run.sh: the test's environment, directory and command line (bash, in the VM).
{
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  echo 'export HOME=/root LANG=C.UTF-8 TERM=${TERM:-dumb} BLKSTACK_VM=1'
  printf 'export BLKSTACK_VM_KVER=%q\n' "$KVER"
  for e in "${ENVS[@]}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
  echo 'mkdir -p "$VM_OUT"'
  printf 'cd %q 2>/dev/null || { echo "run-in-vm: cannot cd to %q in the VM, running in /" >&2; cd /; }\n' "$PWD" "$PWD"
  if [ "$SHELL_MODE" = 1 ]; then
    echo 'exec setsid -c bash -i <>/dev/ttyS0 >&0 2>&0'
  elif [ -x "$SCRIPT" ]; then
    printf 'exec %q' "$SCRIPT"
  else
    printf 'exec bash %q' "$SCRIPT"
  fi
  for a in "$@"; do printf ' %q' "$a"; done
  echo
} >"$CTL/run.sh"

# ---- boot ---------------------------------------------------------------------
KARGS="console=ttyS0 panic=-1 oops=panic"
[ "$VERBOSE" = 1 ] || KARGS="$KARGS quiet loglevel=3"
KARGS="$KARGS$APPEND"
CONSOLE=$RUN/console.log
QEMU=(
  qemu-system-x86_64 "${MACHINE_ARGS[@]}" "${ACCEL_ARGS[@]}"
)
QEMU_FIXED=${#QEMU[@]}  # what follows does not depend on the accelerator
QEMU+=(
  -m "$MEM" -smp "$CPUS"
  -kernel "$KERNEL" -initrd "$INITRD" -append "$KARGS"
  -nodefaults -no-user-config -display none -no-reboot
  -chardev "stdio,id=con,logfile=$CONSOLE"
  -serial chardev:con
  -device virtio-rng-pci -device isa-debug-exit,iobase=0xf4,iosize=0x04
  "${DEV_ARGS[@]}" "${FS_ARGS[@]}" "${EXTRA[@]}"
)
if [ "$VERBOSE" = 1 ]; then
  echo "$PROG: kernel $KVER, $ACCEL, ${CPUS} vCPUs, ${MEM} MiB" >&2
  printf '%q ' "${QEMU[@]}" >&2; echo >&2
fi
# Multi-threaded TCG now and then runs a stale translation of kernel code the
# kernel has just patched (static keys: an int3 left in place), and the guest
# oopses while booting. Nothing of the script has run then, so boot again
# (twice at most); a crash once the script started is the script's verdict.
boot_attempts=0
while :; do
  boot_attempts=$((boot_attempts + 1))
  : >"$RUN/qemu.err"
  if [ "$SHELL_MODE" = 1 ]; then
    # --foreground: QEMU must stay in the terminal's process group to read it.
    # (An explicit <&0: bash gives background jobs /dev/null as stdin.)
    timeout --foreground -k 5 "$TIMEOUT" "${QEMU[@]}" <&0 2> >(tee -a "$RUN/qemu.err" >&2) &
  else
    timeout -k 5 "$TIMEOUT" "${QEMU[@]}" </dev/null 2> >(tee -a "$RUN/qemu.err" >&2) &
  fi
  QPID=$!
  # A KVM internal error pauses the guest for good: notice it and stop QEMU
  # instead of waiting out the timeout.
  kvm_failed=0
  if [ "$ACCEL" = kvm ]; then
    while kill -0 "$QPID" 2>/dev/null; do
      if grep -q 'KVM internal error' "$RUN/qemu.err" 2>/dev/null; then
        kvm_failed=1
        kill -TERM "$QPID" 2>/dev/null || true
        break
      fi
      sleep 0.5
    done
  fi
  set +e
  wait "$QPID"
  QRC=$?
  set -e
  QPID=""
  if [ "$kvm_failed" = 1 ]; then
    if [ -z "$ACCEL_FORCED" ] && [ ! -f "$CTL/boot-uptime" ]; then
      echo "$PROG: KVM cannot run this guest here (KVM internal error while booting); using TCG from now on ($KVM_UNUSABLE_MARK)" >&2
      touch "$KVM_UNUSABLE_MARK" 2>/dev/null || true
      set_accel tcg
      [ "$IOMMU" = 1 ] && MACHINE_ARGS=(-machine q35)
      QEMU=(qemu-system-x86_64 "${MACHINE_ARGS[@]}" "${ACCEL_ARGS[@]}" "${QEMU[@]:QEMU_FIXED}")
      mv -f -- "$CONSOLE" "$CONSOLE.kvm" 2>/dev/null || true
      continue
    fi
    die "KVM internal error in the guest (BLKSTACK_VM_ACCEL=tcg avoids KVM)"
  fi
  if [ "$SHELL_MODE" = 0 ] && [ "$ACCEL" = tcg ] && [ "$boot_attempts" -lt 3 ] && [ ! -f "$CTL/boot-uptime" ] &&
    [ "$QRC" != 124 ] && [ "$QRC" != 137 ] && grep -qE 'Oops:|Kernel panic' "$CONSOLE" 2>/dev/null; then
    echo "$PROG: the guest kernel crashed while booting under TCG ($(grep -m1 -oE 'Oops:[^[]*|Kernel panic.*' "$CONSOLE")); booting again" >&2
    mv -f -- "$CONSOLE" "$CONSOLE.crash$boot_attempts"
    continue
  fi
  break
done
[ -n "$LOGFILE" ] && cp -- "$CONSOLE" "$LOGFILE"

# ---- the verdict ------------------------------------------------------------------
RC=""
if [ -f "$CTL/rc" ]; then
  RC=$(cat "$CTL/rc")
else
  # The 9p file did not make it: fall back to the console marker.
  RC=$(tr -d '\r' <"$CONSOLE" | sed -n "s/.*BLKSTACK_VM_EXIT $TOKEN \([0-9]\{1,3\}\)\$/\1/p" | tail -1)
fi
if [ -n "$RC" ] && [[ $RC =~ ^[0-9]+$ ]]; then
  boot=$(cat "$CTL/boot-uptime" 2>/dev/null || echo '?')
  if [ "$RC" = 0 ]; then
    echo "$PROG: script passed (boot ${boot} s, total $(secs) s, $ACCEL)" >&2
  else
    echo "$PROG: script exited with status $RC (boot ${boot} s, total $(secs) s, $ACCEL)" >&2
  fi
  exit "$RC"
fi
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
  echo "$PROG: error: timed out after ${TIMEOUT} s; the VM was killed" >&2
  exit 124
fi
if grep -q "BLKSTACK_VM_FAIL $TOKEN" "$CONSOLE" 2>/dev/null; then
  die "the VM's init failed (see the vm-init message above)"
fi
die "the VM ended without running the script to completion (QEMU exit status $QRC)"
