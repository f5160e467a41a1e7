# Helpers for scripts that run inside the VM (sourced).
set -euo pipefail
BUILD=${BUILD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}
BLKSTACK=$BUILD/tools/blkstack/blkstack
SCRATCH=$(mktemp -d /var/tmp/vmtest.XXXXXX)
DAEMON_PID=""

log() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# Starts `blkstack serve ARGS...` in the background and waits until it says
# it is ready (--ready-fd).
start_daemon() {
  local fifo=$SCRATCH/ready.$RANDOM
  mkfifo "$fifo"
  "$BLKSTACK" serve --ready-fd 3 "$@" 3>"$fifo" >>"$SCRATCH/daemon.log" 2>&1 &
  DAEMON_PID=$!
  if ! timeout 60 head -c 8 "$fifo" >/dev/null; then
    cat "$SCRATCH/daemon.log" >&2
    fail "the daemon did not become ready"
  fi
  rm -f "$fifo"
}

stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  kill -TERM "$DAEMON_PID" 2>/dev/null || true
  local rc=0
  wait "$DAEMON_PID" || rc=$?
  DAEMON_PID=""
  return $rc
}

wait_for_block() {
  local dev=$1
  for _ in $(seq 200); do [ -b "$dev" ] && return 0; sleep 0.05; done
  fail "$dev did not appear"
}

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
