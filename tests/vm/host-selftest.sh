#!/usr/bin/env bash
# The VM lab's own tests, run on the host (ctest runs each case as a test).
#   setup        build the lab (kernel, initramfs, host packages) if needed
#   selftest     selftest.sh in a VM with NVMe, zoned NVMe and virtio-blk
#                disks; its result file must come back through --out
#   exit-status  fail-selftest.sh exits 3: so must run-in-vm.sh, with the
#                script's output on our stdout; also with the status passed
#                through the console marker alone
#   crash        crash-selftest.sh panics the kernel: run-in-vm.sh must
#                return 125 promptly; a guest that panics while booting is
#                booted again (TCG), twice at most
#   timeout      hang-selftest.sh never ends: --timeout must kill the VM
#                and run-in-vm.sh must return 124 in time
#   interrupt    SIGTERM to run-in-vm.sh (as ctest's timeout sends) must stop
#                QEMU and clean up
#   iommu        iommu-selftest.sh behind an emulated Intel vIOMMU
#   all          every case above
# Usage: tests/vm/host-selftest.sh CASE...
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM=$HERE/run-in-vm.sh

TMP=$(mktemp -d "${TMPDIR:-/tmp}/blkstack-vm-selftest.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "host-selftest: FAIL: $*" >&2; exit 1; }
pass() { echo "host-selftest: ok - $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# run_vm LOG CMD...: run CMD, its output to our stdout and to LOG; sets RC.
run_vm() {
  local log=$1; shift
  set +e
  "$@" 2>&1 | tee "$log"
  RC=${PIPESTATUS[0]}
  set -e
}

case_setup() {
  local t0; t0=$(now)
  "$HERE/lab.sh" --env
  pass "lab ready ($(since "$t0") s)"
}

case_selftest() {
  local out=$TMP/out t0; t0=$(now)
  run_vm "$TMP/selftest.log" "$VM" --timeout 600 \
    --new-disk 256M:nvme:serial=selftest-nvme \
    --new-disk 64M:nvme-zoned:serial=selftest-zns \
    --new-disk 64M:virtio-blk:serial=selftest-vblk \
    --out "$out" "$HERE/selftest.sh"
  [ "$RC" = 0 ] || fail "selftest.sh exited with $RC"
  grep -qx 'selftest ok' "$TMP/selftest.log" || fail "selftest.sh's output did not reach stdout"
  [ -f "$out/selftest.result" ] || fail "selftest.result did not come back through --out"
  grep -qx 'status=ok' "$out/selftest.result" || fail "selftest.result: $(cat "$out/selftest.result")"
  grep -q 'iops' "$out/fio-uring.txt" || fail "fio's report did not come back"
  pass "selftest ($(since "$t0") s)"
}

case_exit_status() {
  local t0; t0=$(now)
  run_vm "$TMP/fail.log" "$VM" --timeout 300 "$HERE/fail-selftest.sh"
  [ "$RC" = 3 ] || fail "run-in-vm.sh returned $RC for a script that exits 3"
  grep -qx 'failing on purpose with status 3' "$TMP/fail.log" || fail "the script's output did not reach stdout"
  pass "exit status 3 came back ($(since "$t0") s)"
  # The fallback channel alone: the console marker, no rc file.
  t0=$(now)
  run_vm "$TMP/fail2.log" env BLKSTACK_VM_RC_CHANNEL=console "$VM" --timeout 300 "$HERE/fail-selftest.sh"
  [ "$RC" = 3 ] || fail "run-in-vm.sh returned $RC through the console marker (want 3)"
  pass "exit status 3 came back through the console marker alone ($(since "$t0") s)"
}

case_crash() {
  local t0; t0=$(now)
  run_vm "$TMP/crash.log" "$VM" --timeout 300 "$HERE/crash-selftest.sh"
  [ "$RC" = 125 ] || fail "run-in-vm.sh returned $RC for a kernel panic (want 125)"
  ! grep -q "booting again" "$TMP/crash.log" || fail "a panic while the script ran was retried"
  pass "a kernel panic ended the run with 125 ($(since "$t0") s)"
  # A panic before the script starts (here: no init to run) is retried under
  # TCG, where multi-threaded TCG sometimes crashes a booting guest.
  t0=$(now)
  BLKSTACK_VM_ACCEL=tcg run_vm "$TMP/bootcrash.log" "$VM" --timeout 300 --append "rdinit=/nonexistent init=/nonexistent" \
    "$HERE/fail-selftest.sh"
  [ "$RC" = 125 ] || fail "run-in-vm.sh returned $RC for a guest that cannot boot (want 125)"
  [ "$(grep -c "booting again" "$TMP/bootcrash.log")" = 2 ] || fail "a crash while booting was not retried twice"
  pass "a crash while booting was retried twice, then 125 ($(since "$t0") s)"
}

# QEMU processes whose run directory is under $1 (run-in-vm.sh makes it in
# $TMPDIR): none may outlive run-in-vm.sh.
# (Read /proc directly: procps may not be installed.)
qemus_under() {
  local f cmd
  for f in /proc/[0-9]*/cmdline; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
    case "$cmd" in "qemu-system-x86_64 "*"$1"*) echo "${f%/cmdline}" ;; esac
  done
}

case_timeout() {
  local t0 took tmp=$TMP/timeout; t0=$(now)
  mkdir -p "$tmp"
  # 20 s: the VM boots in about 8 (TCG), so the script runs well before.
  run_vm "$TMP/hang.log" env TMPDIR="$tmp" "$VM" --timeout 20 "$HERE/hang-selftest.sh"
  took=$(since "$t0")
  [ "$RC" = 124 ] || fail "run-in-vm.sh returned $RC for a hanging script (want 124)"
  grep -qx 'hanging on purpose' "$TMP/hang.log" || fail "the VM never ran the script (raise --timeout?)"
  awk -v t="$took" 'BEGIN { exit !(t < 20 + 20) }' || fail "took $took s to give up after a 20 s timeout"
  [ -z "$(qemus_under "$tmp")" ] || fail "QEMU outlived run-in-vm.sh's timeout"
  [ -z "$(ls -A "$tmp")" ] || fail "run-in-vm.sh left $(ls "$tmp") behind"
  pass "timeout killed the VM and returned 124 ($took s)"
}

case_interrupt() {
  local t0 tmp=$TMP/interrupt pid i; t0=$(now)
  mkdir -p "$tmp"
  TMPDIR="$tmp" "$VM" --timeout 300 "$HERE/hang-selftest.sh" >"$TMP/int.log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do grep -qx 'hanging on purpose' "$TMP/int.log" && break; sleep 0.5; done
  grep -qx 'hanging on purpose' "$TMP/int.log" || { kill "$pid"; cat "$TMP/int.log"; fail "the VM never ran the script"; }
  kill -TERM "$pid"
  set +e; wait "$pid"; RC=$?; set -e
  [ "$RC" = 143 ] || fail "run-in-vm.sh returned $RC on SIGTERM (want 143)"
  [ -z "$(qemus_under "$tmp")" ] || fail "QEMU outlived a SIGTERM'd run-in-vm.sh"
  [ -z "$(ls -A "$tmp")" ] || fail "run-in-vm.sh left $(ls "$tmp") behind"
  pass "SIGTERM stopped the VM and cleaned up ($(since "$t0") s)"
}

case_iommu() {
  local t0; t0=$(now)
  run_vm "$TMP/iommu.log" "$VM" --timeout 600 --iommu \
    --new-disk 64M:nvme:serial=iommu-nvme \
    --new-disk 64M:nvme:serial=iommu-vfio \
    --new-disk 64M:virtio-blk:serial=iommu-vblk \
    "$HERE/iommu-selftest.sh"
  [ "$RC" = 0 ] || fail "iommu-selftest.sh exited with $RC"
  pass "iommu ($(since "$t0") s)"
}

[ $# -ge 1 ] || { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
for c in "$@"; do
  case "$c" in
    setup) case_setup ;;
    selftest) case_selftest ;;
    exit-status) case_exit_status ;;
    timeout) case_timeout ;;
    interrupt) case_interrupt ;;
    crash) case_crash ;;
    iommu) case_iommu ;;
    all) case_setup; case_selftest; case_exit_status; case_timeout; case_interrupt; case_crash; case_iommu ;;
    *) echo "host-selftest: unknown case $c" >&2; exit 2 ;;
  esac
done
