# shellcheck shell=bash
# Shared by the NBD export tests (nbd_*.sh): sourced, never run.
#
#   source "$(dirname "$0")/nbd_lib.sh" "$1"     # $1: the build directory
#
# Gives the test: $BLKSTACK (the daemon binary), $SRC (the source tree),
# $WORK (a scratch directory, removed at exit), and
#   need_packages PKG...          apt-get install what is missing (Debian 12)
#   daemon_start NAME ARGS...     `blkstack serve ARGS --ready-fd`, waits for READY=1
#   daemon_stop NAME              SIGTERM, expects exit status 0
#   daemon_alive NAME             fails the test unless NAME is running
#   ctl SOCKET JSON               one control-socket request; prints the reply
#   free_port                     a TCP port nobody listens on now
#   at_exit CMD...                run CMD when the test ends (reverse order)
#   step TEXT / fail TEXT / expect_fail CMD...
# Every daemon is killed, every at_exit command run and $WORK removed on every
# exit path; a failing test prints the tail of each daemon's log.
set -euo pipefail
shopt -s inherit_errexit

# Debian's tools first: nbdsh runs `python3`, which must be the system one
# (python3-libnbd installs the nbd module there, not into other Pythons).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export LC_ALL=C.UTF-8
unset LIBNBD_DEBUG

TEST_NAME=$(basename "$0" .sh)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[[ $# -ge 1 && -d $1 ]] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
BUILD=$(cd "$1" && pwd)
BLKSTACK=$BUILD/tools/blkstack/blkstack
[[ -x $BLKSTACK ]] || { echo "$TEST_NAME: $BLKSTACK is missing: build first" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "$TEST_NAME: must run as root (apt-get, mounts, modules)" >&2; exit 2; }

WORK=$(mktemp -d "/tmp/blkstack-$TEST_NAME.XXXXXX")
declare -A DAEMON_PID=() DAEMON_LOG=()
_AT_EXIT=()
_T0=$SECONDS

log() { printf '[%s +%ss] %s\n' "$TEST_NAME" "$((SECONDS - _T0))" "$*" >&2; }
step() { log "== $*"; }
fail() {
  printf '[%s] FAIL: %s\n' "$TEST_NAME" "$*" >&2
  exit 1
}
at_exit() { _AT_EXIT+=("$(printf '%q ' "$@")"); }

_cleanup() {
  local rc=$? i name pid
  set +e
  trap - EXIT INT TERM ERR  # cleanup commands may fail (a daemon already gone)
  # Whoever reads our output may be gone (a killed pipeline): cleaning up
  # must not die of SIGPIPE.
  trap '' PIPE
  for ((i = ${#_AT_EXIT[@]} - 1; i >= 0; i--)); do
    eval "${_AT_EXIT[i]}" >/dev/null 2>&1
  done
  for name in "${!DAEMON_PID[@]}"; do
    pid=${DAEMON_PID[$name]}
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ $rc -ne 0 ]]; then
    for name in "${!DAEMON_LOG[@]}"; do
      [[ -s ${DAEMON_LOG[$name]} ]] || continue
      echo "---- daemon $name log (last 40 lines) ----" >&2
      tail -n 40 "${DAEMON_LOG[$name]}" >&2
    done
    log "FAILED (exit $rc) after $((SECONDS - _T0)) s"
  else
    log "PASS in $((SECONDS - _T0)) s"
  fi
  rm -rf --one-file-system "$WORK"
  exit "$rc"
}
trap _cleanup EXIT
# A command that fails outside an assertion (set -e) says where it was.
set -E
trap '_rc=$?; [[ $BASH_COMMAND == exit* ]] || printf "[%s] FAIL: line %s: %s (status %s)\n" "$TEST_NAME" "$LINENO" "$BASH_COMMAND" "$_rc" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# Installs the Debian packages that are not installed yet.
need_packages() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing with apt-get: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1; then
    apt-get update -q >>"$WORK/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$WORK/apt.log" 2>&1 ||
      { tail -n 20 "$WORK/apt.log" >&2; fail "apt-get install ${missing[*]} failed"; }
  fi
}

# daemon_start NAME ARGS...: runs `blkstack serve ARGS` in the background with
# its output in $WORK/NAME.log, and returns once it wrote READY=1 to its
# --ready-fd. Fails the test if it exits first or takes over 30 s.
daemon_start() {
  local name=$1 rfd line="" pid rc
  shift
  local fifo=$WORK/$name.ready
  DAEMON_LOG[$name]=$WORK/$name.log
  rm -f "$fifo"
  mkfifo "$fifo"
  # Held open read-write, so neither side blocks opening the FIFO.
  exec {rfd}<>"$fifo"
  "$BLKSTACK" serve --ready-fd 9 "$@" 9>"$fifo" >>"${DAEMON_LOG[$name]}" 2>&1 &
  pid=$!
  DAEMON_PID[$name]=$pid
  local deadline=$((SECONDS + 30))
  until read -r -t 0.2 -u "$rfd" line; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" || rc=$?
      unset "DAEMON_PID[$name]"
      exec {rfd}<&-
      tail -n 20 "${DAEMON_LOG[$name]}" >&2
      fail "daemon $name exited with status $rc before it was ready"
    fi
    ((SECONDS < deadline)) || fail "daemon $name not ready after 30 s"
  done
  exec {rfd}<&-
  rm -f "$fifo"
  [[ $line == "READY=1" ]] || fail "daemon $name wrote '$line' to its ready fd"
  log "daemon $name ready (pid $pid)"
}

daemon_alive() {
  local pid=${DAEMON_PID[$1]:?no daemon $1}
  kill -0 "$pid" 2>/dev/null || {
    local rc=0
    wait "$pid" || rc=$?
    unset "DAEMON_PID[$1]"
    fail "daemon $1 died (exit status $rc)"
  }
}

# daemon_stop NAME [TIMEOUT]: SIGTERM; the daemon must exit 0 within TIMEOUT
# seconds (default 30).
daemon_stop() {
  local name=$1 timeout=${2:-30} pid rc=0 i
  pid=${DAEMON_PID[$name]:?no daemon $name}
  daemon_alive "$name"
  kill -TERM "$pid"
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && fail "daemon $name still running $timeout s after SIGTERM"
  wait "$pid" || rc=$?
  unset "DAEMON_PID[$name]"
  [[ $rc -eq 0 ]] || fail "daemon $name exited with status $rc after SIGTERM"
  log "daemon $name stopped cleanly"
}

# ctl SOCKET JSON: one request on the control socket, prints the JSON reply.
ctl() {
  python3 - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("control socket closed without a reply")
    buf += chunk
sys.stdout.write(buf.decode())
EOF
}

# ctl_ok SOCKET JSON: like ctl, but the reply must say "ok": true.
ctl_ok() {
  local reply
  reply=$(ctl "$1" "$2")
  jq -e '.ok == true' <<<"$reply" >/dev/null || fail "control request $2 failed: $reply"
  printf '%s\n' "$reply"
}

# ctl_err SOCKET JSON ERRNO: the request must fail with that errno.
ctl_err() {
  local reply
  reply=$(ctl "$1" "$2")
  jq -e --argjson e "$3" '.ok == false and .errno == $e' <<<"$reply" >/dev/null ||
    fail "control request $2: expected errno $3, got $reply"
  printf '%s\n' "$reply"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# expect_fail CMD...: CMD must exit non-zero (its output goes to $WORK/last.err).
expect_fail() {
  if "$@" >"$WORK/last.err" 2>&1; then
    cat "$WORK/last.err" >&2
    fail "expected to fail: $*"
  fi
}

# random_file PATH MIB: MIB MiB of random bytes.
random_file() {
  head -c "$(($2 << 20))" /dev/urandom >"$1"
}

sum_of() { sha256sum "$1" | cut -d' ' -f1; }

same_content() {
  cmp "$1" "$2" >/dev/null || fail "$1 and $2 differ: $(cmp "$1" "$2" 2>&1 | head -1)"
}

# make_tmpfs DIR SIZE: a private tmpfs (unmounted at exit).
make_tmpfs() {
  mkdir -p "$1"
  mount -t tmpfs -o "size=$2,mode=0700" blkstack-test "$1" || fail "cannot mount a tmpfs on $1"
  at_exit umount -l "$1"
}

# nbd_map URI: the base:allocation map as compact JSON [[offset,length,type],...]
nbd_map() {
  nbdinfo --map --json "$1" | jq -c '[.[] | [.offset, .length, .type]]'
}

# wait_for TIMEOUT_S DESCRIPTION CMD...: polls CMD (every 50 ms) until it succeeds.
wait_for() {
  local timeout=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after $timeout s waiting for $what"
    sleep 0.05
  done
}
