# Helpers for VM tests that run `blkstack serve` (source it after nothing
# else: it sources lib.sh, sets strict mode and installs a cleanup trap).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vm_require_vm

BUILD=${BLKSTACK_BUILD_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}
BLKSTACK=$BUILD/tools/blkstack/blkstack
# /tmp in the VM is the overlay over the host's /tmp; scratch files go to
# /var/tmp so nothing of the host's shows through or gets in the way.
SCRATCH=$(mktemp -d /var/tmp/vmtest.XXXXXX)
DAEMON_PID=""
CTL=$SCRATCH/ctl
# Words put before the daemon's command line (e.g. setpriv to drop root).
DAEMON_WRAPPER=()

log() { vm_log "$@"; }
fail() { vm_fail "$@"; }

# start_daemon ARGS...: `blkstack serve --control $CTL ARGS...` in the
# background; returns once it reports readiness through --ready-fd.
start_daemon() {
  local fifo=$SCRATCH/ready.$RANDOM
  mkfifo "$fifo"
  "${DAEMON_WRAPPER[@]}" "$BLKSTACK" serve --ready-fd 3 --control "$CTL" "$@" 3>"$fifo" >>"$SCRATCH/daemon.log" 2>&1 &
  DAEMON_PID=$!
  # The daemon writes READY=1 once listening; EOF without it means it died.
  if ! timeout 60 head -c 8 "$fifo" | grep -q READY=1; then
    cat "$SCRATCH/daemon.log" >&2
    fail "the daemon did not become ready"
  fi
  rm -f "$fifo"
}

# stop_daemon: SIGTERM (drain, then exit); returns the daemon's exit status.
stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  kill -TERM "$DAEMON_PID" 2>/dev/null || true
  local rc=0
  wait "$DAEMON_PID" || rc=$?
  DAEMON_PID=""
  return $rc
}

# kill_daemon: SIGKILL, as a crash would.
kill_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  kill -KILL "$DAEMON_PID" 2>/dev/null || true
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
}

# ctl JSON: one request on the control socket; prints the reply line.
ctl() { echo "$1" | socat -t 10 - UNIX-CONNECT:"$CTL"; }

# export_stat FIELD: a statistic of the first export.
export_stat() {
  ctl '{"cmd":"stats"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["stats"][sys.argv[1]])' "$1"
}

wait_for_block() { vm_wait_for "$1" 10; [ -b "$1" ] || fail "$1 is not a block device"; }

cleanup_vm() {
  local rc=$?
  if [ -n "$DAEMON_PID" ]; then kill -9 "$DAEMON_PID" 2>/dev/null || true; fi
  if [ $rc -ne 0 ] && [ -f "$SCRATCH/daemon.log" ]; then
    echo "---- daemon log ----" >&2
    tail -50 "$SCRATCH/daemon.log" >&2
  fi
  rm -rf "$SCRATCH"
}
trap cleanup_vm EXIT
