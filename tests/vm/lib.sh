# Helpers for scripts that run inside the VM lab (source it:
#   . "$(dirname "$0")/lib.sh"   or   . tests/vm/lib.sh).
# Every helper fails loudly: a test that cannot find its device fails, it does
# not skip.

vm_fail() { echo "FAIL: $*" >&2; exit 1; }
vm_log() { echo "== $*"; }

# Refuse to run on the host by accident (it would modprobe and mkfs there).
vm_require_vm() {
  [ "${BLKSTACK_VM:-0}" = 1 ] || vm_fail "run this inside the VM: tests/vm/run-in-vm.sh $0"
}

# vm_check DESCRIPTION COMMAND...: run COMMAND; print "ok DESCRIPTION" or fail.
vm_check() {
  local what=$1; shift
  if "$@"; then echo "ok - $what"; else vm_fail "$what (command: $*)"; fi
}

# vm_wait_for PATH [SECONDS]: wait until PATH exists (devices appear
# asynchronously; there is no udev).
vm_wait_for() {
  local path=$1 limit=${2:-10} i=0
  while [ ! -e "$path" ]; do
    i=$((i + 1))
    [ $i -le $((limit * 10)) ] || vm_fail "$path did not appear within ${limit} s"
    sleep 0.1
  done
}

vm_modprobe() {
  local m
  for m in "$@"; do modprobe "$m" || vm_fail "modprobe $m"; done
}

# vm_nvme_ctrl SERIAL: the controller name (nvme0, ...) whose serial is SERIAL
# (run-in-vm.sh gives disk N the serial blkstackN unless serial= is passed).
vm_nvme_ctrl() {
  local serial=$1 i c s
  vm_modprobe nvme
  for i in $(seq 100); do
    for c in /sys/class/nvme/nvme*; do
      [ -e "$c/serial" ] || continue
      s=$(tr -d ' ' <"$c/serial")
      [ "$s" = "$serial" ] && { basename "$c"; return 0; }
    done
    sleep 0.1
  done
  vm_fail "no NVMe controller with serial $serial"
}

# vm_nvme_dev SERIAL [NSID]: the block device of namespace NSID (default 1),
# e.g. /dev/nvme0n1. vm_nvme_char: its generic char device, e.g. /dev/ng0n1.
vm_nvme_dev() {
  local c
  c=$(vm_nvme_ctrl "$1") || exit 1
  vm_wait_for "/dev/${c}n${2:-1}"
  echo "/dev/${c}n${2:-1}"
}
vm_nvme_char() {
  local c
  c=$(vm_nvme_ctrl "$1") || exit 1
  vm_wait_for "/dev/ng${c#nvme}n${2:-1}"
  echo "/dev/ng${c#nvme}n${2:-1}"
}

# vm_virtio_blk_dev SERIAL: the virtio-blk disk (/dev/vdX) with that serial.
vm_virtio_blk_dev() {
  local serial=$1 i b
  vm_modprobe virtio_blk
  for i in $(seq 100); do
    for b in /sys/block/vd*; do
      [ -e "$b/serial" ] || continue
      [ "$(cat "$b/serial")" = "$serial" ] && { echo "/dev/$(basename "$b")"; return 0; }
    done
    sleep 0.1
  done
  vm_fail "no virtio-blk disk with serial $serial"
}

# vm_wait_port PORT [SECONDS]: wait until something listens on 127.0.0.1:PORT.
vm_wait_port() {
  local port=$1 limit=${2:-10} i=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    i=$((i + 1))
    [ $i -le $((limit * 10)) ] || vm_fail "nothing listens on 127.0.0.1:$port after ${limit} s"
    sleep 0.1
  done
}
