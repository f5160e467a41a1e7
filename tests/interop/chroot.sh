# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Helpers for tests that run real libblkio consumers inside the cached Debian
# trixie chroot (scripts/trixie-root.sh); sourced after lib.sh.
#
#   setup_chroot             ensure the chroot exists, set ROOT
#   in_root CMD...           run CMD in the chroot on OUR library, with $WORK
#                            bound at /scratch (foreground, 300 s limit)
#   start_daemon NAME PIDFILE CMD...
#                            start CMD in the chroot in the background (it must
#                            write PIDFILE, a /scratch path), wait for it, and
#                            register its cleanup; sets DAEMON_PID
#   stop_daemon PID          SIGTERM it and wait for it to go

setup_chroot() {
    step "trixie chroot with the real consumers (cached; built on first use)"
    ROOT=$("$REPO_ROOT/scripts/trixie-root.sh" ensure "${BLKSTACK_TRIXIE_ROOT:-/var/cache/blkstack/trixie-root}") ||
        die "could not create the trixie chroot"
    log "chroot: $ROOT"
}

in_root() {
    timeout -k 5 300 "$REPO_ROOT/scripts/trixie-root.sh" run --lib "$BLKSTACK_LIBDIR" \
        --bind "$WORK:/scratch" "$ROOT" -- "$@"
}

start_daemon() {
    local name=$1 pidfile=$2; shift 2
    local host_pidfile=$WORK${pidfile#/scratch} i
    rm -f "$host_pidfile"
    # setpriv execs trixie-root.sh run, which execs unshare; sh execs
    # chroot, chroot execs env, env execs the daemon: the background job's
    # pid is the daemon's pid. --pdeathsig: the daemon gets SIGTERM when this
    # script dies, even by SIGKILL (when the trap cannot run).
    setpriv --pdeathsig TERM "$REPO_ROOT/scripts/trixie-root.sh" run --lib "$BLKSTACK_LIBDIR" \
        --bind "$WORK:/scratch" "$ROOT" -- "$@" > "$WORK/$name.log" 2>&1 &
    DAEMON_PID=$!
    register_cleanup "kill -TERM $DAEMON_PID; sleep 0.2; kill -KILL $DAEMON_PID"
    for ((i = 0; i < 200; i++)); do
        [[ -s $host_pidfile ]] && break
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            cat "$WORK/$name.log" >&2
            die "$name exited during startup (log above)"
        fi
        sleep 0.1
    done
    [[ -s $host_pidfile ]] || { cat "$WORK/$name.log" >&2; die "$name did not write $pidfile within 20 s"; }
    [[ $(cat "$host_pidfile") == "$DAEMON_PID" ]] ||
        die "$name pidfile says $(cat "$host_pidfile"), expected $DAEMON_PID"
    log "$name running, pid $DAEMON_PID (log: $WORK/$name.log)"
}

stop_daemon() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || die "daemon $pid already gone"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
        die "daemon $pid did not exit within 10 s of SIGTERM"
    fi
    wait "$pid" 2>/dev/null || true   # its exit status after SIGTERM is not a test result
}
