# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Shared by the vhost-user-blk tests and benchmarks (tests/interop/vhost_user.sh,
# tests/vm/vhost_user_guest.sh, bench/vhost_user/run.sh): sourced, never run.
#
#   source tests/interop/vhost_lib.sh
#   vhost_setup BUILD_DIR        # root, packages, $WORK, real libblkio, example binaries
#   vhost_setup_servers BUILD_DIR   # only root, packages, $WORK (no clients)
#
# Servers (each one is killed at exit; several may run at once, keyed by socket):
#   start_qsd_vhost IMG SOCK [NUM_QUEUES] [readonly]
#                     Debian 12's qemu-storage-daemon exporting IMG as
#                     vhost-user-blk on the Unix socket SOCK (file driver,
#                     aio=$VHOST_QSD_AIO (threads), cache.direct=off)
#   start_blkstack_vhost IMG SOCK [QUEUES] [readonly]
#                     `blkstack serve --blockdev io_uring,id=d0,path=IMG
#                     --export vhost-user-blk,blockdev=d0,socket=SOCK,queues=N`
#                     (ready once it writes READY=1 to its --ready-fd)
#   start_vhost_server qsd|blkstack IMG SOCK [QUEUES] [readonly]
#   stop_vhost_server SOCK       SIGTERM; must exit within 30 s (status not checked)
#   kill_vhost_server SOCK       SIGKILL, reaped
#   vhost_server_pid SOCK
# Clients: libblkio's own example programs, compiled once against the REAL
# blkio.h; CLIENT picks the library they load (LD_LIBRARY_PATH):
#   real  - Debian trixie's libblkio 1.5.0 ($REAL_LIBDIR)
#   ours  - this build's libblkio.so.1     ($OUR_LIBDIR)
#   blkio_run CLIENT PROG ARGS...          e.g. blkio_run real blkio-info ...
#   libblkio_copy_vhost CLIENT in FILE SOCK [PROP=VAL...]   FILE -> device (blkio-copy)
#   libblkio_copy_vhost CLIENT out SOCK FILE [PROP=VAL...]  device -> FILE (created or
#                     truncated first); PROP=VAL: more driver properties, e.g.
#                     read-only=true (needed for a read-only export: libblkio's
#                     blkio_start() fails with "Device is read-only" otherwise)
#   libblkio_bench_vhost CLIENT SOCK RW BS DEPTH SECONDS [BLKIO-BENCH-OPTS...]
#                     sets BENCH_IOPS (integer); the JSON goes to
#                     $WORK/bench.last.json; fails on a non-zero exit. Call it
#                     in the current shell, not in $(...): it may restart qsd
#                     (vhost_qsd_retry)
# Availability of OUR code (the driver and the export are being written):
#   vhost_client_available       our libblkio.so.1 knows virtio-blk-vhost-user
#   vhost_export_available       our blkstack knows the vhost-user-blk export
#   vhost_why_unavailable ours-client|ours-export   a one-line reason
# Set BLKSTACK_VHOST_REQUIRE=1 to turn "absent" into a failure (CI, once
# both have landed): nothing is ever skipped then.

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# A failure shows the end of every server's log (they live in $WORK, which
# is removed at exit), the dead ones' included.
die() {
    printf '[%s] FAIL: %s\n' "$TEST_NAME" "$*" >&2
    local sock
    for sock in "${!VHOST_LOG[@]}"; do
        [[ -s ${VHOST_LOG[$sock]} ]] || continue
        printf -- '---- %s server on %s: log (last 30 lines) ----\n' "${VHOST_KIND[$sock]}" "$sock" >&2
        tail -n 30 "${VHOST_LOG[$sock]}" >&2
    done
    exit 1
}

# qemu-storage-daemon 7.2 with aio=io_uring stalls for more than blkio-bench's
# 500 ms bound in about half the runs at depth 32 on two queues, whichever
# client drives it (2026-11-30, fresh qsd per run: real libblkio 7 of 10, ours
# 4 of 10; aio=threads 0 of 8). These tests are about the protocol, not the
# peer's I/O engine: threads by default (bench/vhost_user keeps io_uring).
VHOST_QSD_AIO=${VHOST_QSD_AIO:-threads}
VHOST_TIMEOUT=${VHOST_TIMEOUT:-60}   # bound for each client run (seconds)
declare -A VHOST_PID=() VHOST_LOG=() VHOST_KIND=() VHOST_START=()
VHOST_QSD_CRASHES=0

# vhost_setup_servers BUILD_DIR: only what the servers need.
vhost_setup_servers() {
    setup_build "${1:-}"
    BLKSTACK=$BLKSTACK_BUILD/tools/blkstack/blkstack
    [[ -x $BLKSTACK ]] || die "$BLKSTACK is missing: build first"
    need_pkgs cmp:diffutils timeout:coreutils qemu-storage-daemon:qemu-system-common
    make_workdir
    register_cleanup "vhost_kill_all"
    # Messages that must reach the terminal even from commands whose stderr
    # is redirected (vhost_qsd_retry inside libblkio_bench_vhost).
    exec {VHOST_LOGFD}>&2
}

vhost_setup() {
    vhost_setup_servers "${1:-}"
    need_pkgs gcc:gcc /usr/include/stdio.h:libc6-dev jq:jq \
        /usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring
    REAL=$("$REPO_ROOT/scripts/libblkio-dev.sh" "${BLKSTACK_LIBBLKIO_DIR:-/var/cache/blkstack/libblkio}") ||
        die "could not fetch libblkio-dev"
    REAL_LIBDIR=$REAL/usr/lib/x86_64-linux-gnu
    OUR_LIBDIR=$BLKSTACK_LIBDIR
    VHOST_BIN=$WORK/bin
    mkdir -p "$VHOST_BIN"
    local prog
    for prog in blkio-info blkio-copy blkio-bench; do
        gcc -std=gnu11 -O2 -g -I"$REAL/usr/include" -o "$VHOST_BIN/$prog" \
            "$REAL/usr/share/doc/libblkio-dev/examples/$prog.c" \
            -L"$REAL_LIBDIR" -lblkio -lpthread 2>"$WORK/$prog.cc.log" ||
            { cat "$WORK/$prog.cc.log" >&2; die "cannot compile libblkio's $prog"; }
    done
    # The two runs must really load two different libraries.
    local r o
    r=$(LD_LIBRARY_PATH=$REAL_LIBDIR ldd "$VHOST_BIN/blkio-info" | awk '/libblkio/ {print $3}')
    o=$(LD_LIBRARY_PATH=$OUR_LIBDIR ldd "$VHOST_BIN/blkio-info" | awk '/libblkio/ {print $3}')
    [[ $(realpath "$r") == "$(realpath "$REAL_LIBDIR/libblkio.so.1.5.0")" ]] || die "'real' runs would load $r"
    [[ $(realpath "$o") == "$BLKSTACK_LIB" ]] || die "'ours' runs would load $o"
    # The real library must have the driver (Debian builds it with all of them).
    grep -aq virtio-blk-vhost-user "$REAL_LIBDIR/libblkio.so.1.5.0" ||
        die "real libblkio has no virtio-blk-vhost-user driver"
}

# ---- is our code there? -----------------------------------------------------
# Presence is decided from the built files themselves, never from a flag a
# test sets: the driver's name must be in our libblkio.so.1 (it is the string
# blkio_create() compares) or its module blkstack-drivers/virtio-blk-vhost-user.so
# must exist beside it; the export's type name must be in the blkstack binary
# or in `serve --help`. Once the code exists, these tests run and can fail.
vhost_client_available() {
    grep -aq 'virtio-blk-vhost-user' "$BLKSTACK_LIB" && return 0
    # or a driver module (docs/driver-modules.md): <name>.so beside the library
    local d
    for d in ${BLKSTACK_DRIVER_DIR:+"$BLKSTACK_DRIVER_DIR"} "$BLKSTACK_LIBDIR/blkstack-drivers"; do
        [[ -e $d/virtio-blk-vhost-user.so ]] && return 0
    done
    return 1
}
vhost_export_available() {
    "$BLKSTACK" serve --help 2>&1 | grep -q 'vhost-user-blk' && return 0
    grep -aq 'vhost-user-blk' "$BLKSTACK"
}
vhost_why_unavailable() {
    case $1 in
        ours-client) echo "our libblkio.so.1 ($BLKSTACK_LIB) has no virtio-blk-vhost-user driver yet (built in or as $BLKSTACK_LIBDIR/blkstack-drivers/virtio-blk-vhost-user.so)" ;;
        ours-export) echo "our blkstack ($BLKSTACK) has no vhost-user-blk export yet" ;;
    esac
}
# vhost_require_or_skip WHAT (ours-client|ours-export): 0 if present; 1
# (after saying why) if absent; dies if absent under BLKSTACK_VHOST_REQUIRE=1.
vhost_require_or_skip() {
    local ok=0
    case $1 in
        ours-client) vhost_client_available || ok=1 ;;
        ours-export) vhost_export_available || ok=1 ;;
        *) die "vhost_require_or_skip: $1?" ;;
    esac
    [[ $ok -eq 0 ]] && return 0
    [[ ${BLKSTACK_VHOST_REQUIRE:-0} == 1 ]] && die "BLKSTACK_VHOST_REQUIRE=1 but $(vhost_why_unavailable "$1")"
    return 1
}

# ---- servers ----------------------------------------------------------------
_vhost_wait_ready() {  # SOCK PIDFILE(or empty) WHAT
    local sock=$1 pidfile=$2 what=$3 pid=${VHOST_PID[$1]} deadline=$((SECONDS + 30))
    until [[ -S $sock ]] && { [[ -z $pidfile ]] || [[ -s $pidfile ]]; }; do
        if ! kill -0 "$pid" 2>/dev/null; then
            local rc=0; wait "$pid" || rc=$?
            unset "VHOST_PID[$sock]"
            tail -n 20 "${VHOST_LOG[$sock]}" >&2
            die "$what exited with status $rc before its socket $sock appeared"
        fi
        ((SECONDS < deadline)) || die "$what: no socket $sock after 30 s"
        sleep 0.05
    done
}

start_qsd_vhost() {
    local img=$1 sock=$2 queues=${3:-1} ro=${4:-} writable=on bro=off
    [[ -f $img || -b $img ]] || die "start_qsd_vhost: no image $img"
    [[ -n $ro ]] && { writable=off; bro=on; }
    rm -f "$sock" "$sock.pid"
    VHOST_LOG[$sock]=$sock.log
    VHOST_KIND[$sock]=qsd
    VHOST_START[$sock]="$img $queues $ro"
    local args=(
        --blockdev "driver=file,node-name=file0,filename=$img,aio=$VHOST_QSD_AIO,cache.direct=off,read-only=$bro"
        --export "type=vhost-user-blk,id=vhu0,node-name=file0,addr.type=unix,addr.path=$sock,writable=$writable,num-queues=$queues"
        --pidfile "$sock.pid"
    )
    log "qemu-storage-daemon ${args[*]}"
    echo "== $(date +%T) qemu-storage-daemon ${args[*]}" >>"${VHOST_LOG[$sock]}"
    qemu-storage-daemon "${args[@]}" >>"${VHOST_LOG[$sock]}" 2>&1 &
    VHOST_PID[$sock]=$!
    _vhost_wait_ready "$sock" "$sock.pid" "qemu-storage-daemon"
    log "qemu-storage-daemon (pid ${VHOST_PID[$sock]}) serves $img on $sock ($queues queue(s)${ro:+, read-only})"
}

start_blkstack_vhost() {
    local img=$1 sock=$2 queues=${3:-1} ro=${4:-} rfd line="" pid rc
    [[ -f $img || -b $img ]] || die "start_blkstack_vhost: no image $img"
    rm -f "$sock"
    VHOST_LOG[$sock]=$sock.log
    VHOST_KIND[$sock]=blkstack
    local export="vhost-user-blk,blockdev=d0,socket=$sock,queues=$queues"
    [[ -n $ro ]] && export+=",readonly=on"
    local args=(--blockdev "io_uring,id=d0,path=$img" --export "$export")
    # shellcheck disable=SC2206  # extra arguments, word-split on purpose
    [[ -n ${VHOST_BLKSTACK_EXTRA:-} ]] && args+=($VHOST_BLKSTACK_EXTRA)
    log "blkstack serve ${args[*]}"
    local fifo=$sock.ready
    rm -f "$fifo"; mkfifo "$fifo"
    exec {rfd}<>"$fifo"
    echo "== $(date +%T) blkstack serve ${args[*]}" >>"${VHOST_LOG[$sock]}"
    "$BLKSTACK" serve --ready-fd 9 "${args[@]}" 9>"$fifo" >>"${VHOST_LOG[$sock]}" 2>&1 &
    pid=$!
    VHOST_PID[$sock]=$pid
    local deadline=$((SECONDS + 30))
    until read -r -t 0.2 -u "$rfd" line; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0; wait "$pid" || rc=$?
            unset "VHOST_PID[$sock]"
            exec {rfd}<&-
            tail -n 20 "${VHOST_LOG[$sock]}" >&2
            die "blkstack serve exited with status $rc before it was ready"
        fi
        ((SECONDS < deadline)) || die "blkstack serve not ready after 30 s"
    done
    exec {rfd}<&-
    rm -f "$fifo"
    [[ $line == "READY=1" ]] || die "blkstack serve wrote '$line' to its ready fd"
    _vhost_wait_ready "$sock" "" "blkstack serve"
    log "blkstack serve (pid $pid) serves $img on $sock ($queues queue(s)${ro:+, read-only})"
}

start_vhost_server() {  # qsd|blkstack IMG SOCK [QUEUES] [readonly]
    local kind=$1; shift
    case $kind in
        qsd) start_qsd_vhost "$@" ;;
        blkstack) start_blkstack_vhost "$@" ;;
        *) die "start_vhost_server: unknown server $kind" ;;
    esac
}

vhost_server_pid() { echo "${VHOST_PID[$1]:?no server on $1}"; }

# vhost_server_alive SOCK: the server runs. A qsd that died of the known
# 7.2 bug (see vhost_qsd_retry) is logged, started again, and counts as alive.
vhost_server_alive() {
    local pid=${VHOST_PID[$1]:?no server on $1}
    kill -0 "$pid" 2>/dev/null && return 0
    _qsd_died_of_known_bug "$1" || return 1
    wait "$pid" 2>/dev/null || true
    unset "VHOST_PID[$1]"
    VHOST_QSD_CRASHES=$((VHOST_QSD_CRASHES + 1))
    log "KNOWN PEER BUG: qemu-storage-daemon 7.2 aborted ($VHOST_QSD_BUG) after a front-end left with requests in flight; restarting it" >&"$VHOST_LOGFD"
    _qsd_restart "$1"
}

stop_vhost_server() {
    local sock=$1 pid i rc=0
    pid=${VHOST_PID[$sock]:-}
    [[ -n $pid ]] || return 0
    if ! kill -0 "$pid" 2>/dev/null; then
        if _qsd_died_of_known_bug "$sock"; then
            wait "$pid" 2>/dev/null || true
            unset "VHOST_PID[$sock]"
            VHOST_QSD_CRASHES=$((VHOST_QSD_CRASHES + 1))
            log "KNOWN PEER BUG: qemu-storage-daemon 7.2 aborted ($VHOST_QSD_BUG) before it was stopped" >&"$VHOST_LOGFD"
            rm -f "$sock" "$sock.pid"
            return 0
        fi
        wait "$pid" 2>/dev/null || rc=$?
        unset "VHOST_PID[$sock]"
        die "${VHOST_KIND[$sock]} on $sock died on its own before it was stopped (status $rc)"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid" 2>/dev/null; die "${VHOST_KIND[$sock]} on $sock still running 30 s after SIGTERM"; }
    wait "$pid" 2>/dev/null || true
    unset "VHOST_PID[$sock]"
    rm -f "$sock" "$sock.pid"
}

kill_vhost_server() {
    local sock=$1 pid rc=0
    pid=${VHOST_PID[$sock]:?no server on $sock}
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || rc=$?
        unset "VHOST_PID[$sock]"
        die "${VHOST_KIND[$sock]} on $sock died on its own before it was killed (status $rc)"
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "VHOST_PID[$sock]"
}

vhost_kill_all() {
    local sock pid i
    for sock in "${!VHOST_PID[@]}"; do
        pid=${VHOST_PID[$sock]}
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    return 0
}

# Debian 12's qemu-storage-daemon 7.2 sometimes aborts when a front-end
# disconnects with requests in flight (blkio-bench and bench-one exit with
# their queue full), mostly on a loaded machine:
#   util/vhost-user-server.c:79: vhost_user_server_ref: Assertion
#   `!server->wait_idle' failed.
# That is qsd's bug, not the code under test: vhost_qsd_retry SOCK CMD...
# runs CMD; if it fails because qsd on SOCK died of exactly that assertion,
# qsd is started again on the same image and CMD runs once more (counted in
# VHOST_QSD_CRASHES and logged). Any other failure is returned as is.
VHOST_QSD_BUG="vhost_user_server_ref: Assertion \`!server->wait_idle' failed"
_qsd_died_of_known_bug() {  # SOCK
    local sock=$1 pid=${VHOST_PID[$1]:-}
    [[ ${VHOST_KIND[$sock]:-} == qsd && -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null && return 1
    # only what this instance wrote (after its start line)
    awk '/^== .* qemu-storage-daemon /{buf = ""; next} {buf = buf $0 "\n"} END {printf "%s", buf}' \
        "${VHOST_LOG[$sock]}" | grep -qF "$VHOST_QSD_BUG"
}
vhost_qsd_retry() {
    local sock=$1 rc=0
    shift
    "$@" && return 0 || rc=$?
    _qsd_died_of_known_bug "$sock" || return "$rc"
    wait "${VHOST_PID[$sock]}" 2>/dev/null || true
    unset "VHOST_PID[$sock]"
    VHOST_QSD_CRASHES=$((VHOST_QSD_CRASHES + 1))
    log "KNOWN PEER BUG: qemu-storage-daemon 7.2 aborted ($VHOST_QSD_BUG) after a front-end left with requests in flight; restarting it and retrying once" >&"$VHOST_LOGFD"
    _qsd_restart "$sock"
    "$@"
}
_qsd_restart() {  # SOCK: same image, queues, read-only as before
    local st
    read -r -a st <<<"${VHOST_START[$1]}"
    start_qsd_vhost "${st[0]}" "$1" "${st[1]}" "${st[2]:-}" >&"$VHOST_LOGFD" 2>&1
}

# vhost_server_log_tail SOCK: for failure messages.
vhost_server_log_tail() { tail -n 20 "${VHOST_LOG[$1]:-/dev/null}" 2>/dev/null || true; }

# ---- clients ----------------------------------------------------------------
_client_libdir() {
    case $1 in
        real) echo "$REAL_LIBDIR" ;;
        ours) echo "$OUR_LIBDIR" ;;
        *) die "unknown client '$1' (real|ours)" ;;
    esac
}

# blkio_run CLIENT PROG ARGS...: PROG (blkio-info|blkio-copy|blkio-bench) on
# CLIENT's library, bounded by $VHOST_TIMEOUT (status 124 then).
blkio_run() {
    local libdir
    libdir=$(_client_libdir "$1")
    LD_LIBRARY_PATH=$libdir timeout -k 5 "$VHOST_TIMEOUT" "$VHOST_BIN/$2" "${@:3}"
}

libblkio_copy_vhost() {  # CLIENT in FILE SOCK [PROP=VAL...] | CLIENT out SOCK FILE [PROP=VAL...]
    local client=$1 dir=$2
    case $dir in
        in) blkio_run "$client" blkio-copy --input-file="$3" \
                --output-blkio=virtio-blk-vhost-user "path=$4" "${@:5}" ;;
        out) : >"$4"
             blkio_run "$client" blkio-copy --input-blkio=virtio-blk-vhost-user "path=$3" "${@:5}" \
                --output-file="$4" ;;
        *) die "libblkio_copy_vhost: direction must be in or out" ;;
    esac
}

libblkio_bench_vhost() {  # CLIENT SOCK RW BS DEPTH SECONDS [OPTS...] -> $BENCH_IOPS
    local client=$1 sock=$2 rw=$3 bs=$4 depth=$5 secs=$6 kiops rc=0
    shift 6
    BENCH_IOPS=""
    local attempt
    for attempt in 1 2 3; do
        rc=0
        vhost_qsd_retry "$sock" blkio_run "$client" blkio-bench --runtime="$secs" --iodepth="$depth" \
            --blocksize="$bs" --readwrite="$rw" "$@" virtio-blk-vhost-user "path=$sock" \
            >"$WORK/bench.last.json" 2>"$WORK/bench.last.err" || rc=$?
        # blkio-bench aborts when one completion takes over 500 ms. CI saw it
        # twice in a row at depth 32 on 2 threads, once with real libblkio on
        # qsd and once with ours on qsd, never in 25 quiet runs by hand: up to
        # three tries, each logged. A completion really lost times out every
        # time, and still fails the test.
        [[ $rc -ne 0 ]] && grep -q "Timeout receiving completion event" "$WORK/bench.last.err" && [[ $attempt -lt 3 ]] ||
            break
        if [[ ${VHOST_KIND[$sock]} == qsd ]]; then
            # The peer may be wedged by the front-end that left before (its
            # 7.2 export has known trouble with that, see _qsd_died_of_known_bug):
            # a fresh qsd on the same image. Our export is never restarted.
            log "blkio-bench: no completion event from qemu-storage-daemon within 500 ms (try $attempt of 3): restarting qsd, again" >&"$VHOST_LOGFD"
            kill_vhost_server "$sock"
            rm -f "$sock" "$sock.pid"
            _qsd_restart "$sock"
        else
            log "blkio-bench: no completion event within its own 500 ms bound (try $attempt of 3): again" >&"$VHOST_LOGFD"
        fi
    done
    if [[ $rc -ne 0 ]]; then
        cat "$WORK/bench.last.err" >&2
        return "$rc"
    fi
    # blkio-bench's JSON: {"aggregate": {"kiops": N, ...}, "threads": [...]}
    kiops=$(jq -e '.aggregate.kiops' "$WORK/bench.last.json") ||
        { cat "$WORK/bench.last.json" >&2; die "blkio-bench printed no aggregate.kiops"; }
    BENCH_IOPS=$(awk -v k="$kiops" 'BEGIN { printf "%.0f\n", k * 1000 }')
}
