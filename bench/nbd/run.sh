#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/nbd/run.sh - NBD server benchmark: blkstack serve against the best
# peers, side by side in one run, same client, same image, interleaved.
#
# Servers (each serves one image file on tmpfs, buffered I/O everywhere):
#   blkstack      blkstack serve, io_uring blockdev (ours)
#   nbdkit-file   bookworm's nbdkit 1.32, file plugin, default threads
#   nbdkit-blkio  trixie's nbdkit 1.42, blkio plugin, io_uring driver, real
#                 libblkio 1.5 (run in a cached trixie chroot, see
#                 scripts/trixie-root.sh)
#   qemu-nbd      bookworm's QEMU 7.2: -f raw --aio=io_uring --cache=writeback
#                 (buffered, like the others; --qemu-cache none for O_DIRECT)
# Transports: a Unix socket and TCP on 127.0.0.1.
# Workloads (fio's nbd engine, time based; nbdcopy for the sequential read):
#   randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32
#   seqread-1m      nbdcopy --request-size=1048576 --requests=R --connections=J
#                   URI null:, repeated until the point's time is used up
# Every round runs every (workload, transport) for the servers in turn
# (A,B,C,D,A,B,C,D...); the report gives medians over the rounds.
# Each point starts its server afresh and stops it afterwards. Server CPU per
# request = utime+stime of the server process (/proc/PID/stat, all threads)
# over the point / requests completed (from fio's JSON).
#
# Usage: bench/nbd/run.sh [options]
#   --quick             1 round x 3 s per point (about 3 min)
#   --runtime S         seconds per point (default 4)
#   --rounds N          repeat rounds (default 3; a default run takes about 13 min)
#   --jobs N            clients: fio numjobs=N (one connection each),
#                       nbdcopy --connections=N (default 1)
#   --servers LIST      comma list (default blkstack,nbdkit-file,nbdkit-blkio,qemu-nbd)
#   --transports LIST   comma list of unix,tcp (default both)
#   --workloads LIST    comma list (default all five above)
#   --size MIB          image size (default 1024)
#   --threads N         blkstack reactor threads (default: blkstack's, one per CPU)
#   --qemu-cache MODE   writeback (default) or none
#   --nbdcopy-requests N  nbdcopy --requests (default 16)
#   --blkstack PATH     the blkstack binary (default build/tools/blkstack/blkstack;
#                       built with cmake+ninja when missing)
#   --baseline PATH     also run this other blkstack binary, as server
#                       "blkstack-base" (a peer in the ratios): before/after
#                       comparisons of a change in one interleaved run
#   --out DIR           keep raw results here (default /tmp/blkstack-nbdbench-DATE)
#   --json FILE         write the results JSON here (default DIR/results.json)
#   --strict            fail when a server cannot be set up (default: warn, skip it)
#   -h, --help
#
# Needs root (the trixie chroot). Installs missing Debian packages with apt-get.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

RUNTIME=4
ROUNDS=3
JOBS=1
SERVERS=blkstack,nbdkit-file,nbdkit-blkio,qemu-nbd
TRANSPORTS=unix,tcp
WORKLOADS=randread-4k-qd1,randread-4k-qd32,randwrite-4k-qd1,randwrite-4k-qd32,seqread-1m
SIZE_MIB=1024
THREADS=
QEMU_CACHE=writeback
NBDCOPY_REQUESTS=16
BLKSTACK=$ROOT/build/tools/blkstack/blkstack
BASELINE=
OUT=
JSON=
STRICT=0

log() { printf '[nbdbench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'nbdbench: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) RUNTIME=3; ROUNDS=1; shift ;;
        --runtime) RUNTIME=${2:?}; shift 2 ;;
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --jobs) JOBS=${2:?}; shift 2 ;;
        --servers) SERVERS=${2:?}; shift 2 ;;
        --transports) TRANSPORTS=${2:?}; shift 2 ;;
        --workloads) WORKLOADS=${2:?}; shift 2 ;;
        --size) SIZE_MIB=${2:?}; shift 2 ;;
        --threads) THREADS=${2:?}; shift 2 ;;
        --qemu-cache) QEMU_CACHE=${2:?}; shift 2 ;;
        --nbdcopy-requests) NBDCOPY_REQUESTS=${2:?}; shift 2 ;;
        --blkstack) BLKSTACK=${2:?}; shift 2 ;;
        --baseline) BASELINE=$(realpath -e "${2:?}") || die "no baseline binary $2"; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --json) JSON=${2:?}; shift 2 ;;
        --strict) STRICT=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
done

for v in RUNTIME ROUNDS JOBS SIZE_MIB NBDCOPY_REQUESTS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--${v,,} must be a positive integer (got '${!v}')"
done
[[ -z $THREADS || $THREADS =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer"
[[ $QEMU_CACHE == writeback || $QEMU_CACHE == none ]] || die "--qemu-cache must be writeback or none"
IFS=, read -r -a SERVER_LIST <<< "$SERVERS"
[[ -z $BASELINE ]] || SERVER_LIST+=(blkstack-base)
IFS=, read -r -a TRANSPORT_LIST <<< "$TRANSPORTS"
IFS=, read -r -a WORKLOAD_LIST <<< "$WORKLOADS"
for s in "${SERVER_LIST[@]}"; do
    case $s in blkstack|blkstack-base|nbdkit-file|nbdkit-blkio|qemu-nbd) ;; *) die "unknown server '$s'" ;; esac
done
for t in "${TRANSPORT_LIST[@]}"; do
    case $t in unix|tcp) ;; *) die "unknown transport '$t'" ;; esac
done
for w in "${WORKLOAD_LIST[@]}"; do
    case $w in randread-4k-qd1|randread-4k-qd32|randwrite-4k-qd1|randwrite-4k-qd32|seqread-1m) ;;
        *) die "unknown workload '$w'" ;; esac
done

[[ $(id -u) -eq 0 ]] || die "run as root (the nbdkit-blkio server runs in a chroot)"

# ---- dependencies ----
APT_UPDATED=0
apt_install() {
    log "installing with apt-get: $*"
    export DEBIAN_FRONTEND=noninteractive
    if [[ $APT_UPDATED -eq 0 ]]; then apt-get update -qq >/dev/null || true; APT_UPDATED=1; fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}
need() {  # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || apt_install "$2"
    command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
}
need fio fio
need nbdkit nbdkit
need nbdcopy libnbd-bin
need nbdinfo libnbd-bin
need qemu-nbd qemu-utils
need python3 python3
need unshare util-linux
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (need fio >= 3.20 built with libnbd)"
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3
CLK_TCK=$(getconf CLK_TCK)

if [[ " ${SERVER_LIST[*]} " == *" blkstack "* && ! -x $BLKSTACK ]]; then
    if [[ $BLKSTACK == "$ROOT/build/tools/blkstack/blkstack" ]]; then
        log "building blkstack (cmake + ninja in $ROOT/build)"
        need cmake cmake
        need ninja ninja-build
        cmake -S "$ROOT" -B "$ROOT/build" -G Ninja >/dev/null
        ninja -C "$ROOT/build" tools/blkstack/blkstack >/dev/null 2>&1 || ninja -C "$ROOT/build" >/dev/null
    fi
    [[ -x $BLKSTACK ]] || die "no blkstack binary at $BLKSTACK"
fi

skip_server() {  # skip_server NAME WHY
    [[ $STRICT -eq 0 ]] || die "$1: $2"
    log "WARNING: leaving out $1: $2"
    local keep=() s
    for s in "${SERVER_LIST[@]}"; do [[ $s == "$1" ]] || keep+=("$s"); done
    SERVER_LIST=("${keep[@]}")
}

TRIXIE=$ROOT/scripts/trixie-root.sh
TRIXIE_DIR=
if [[ " ${SERVER_LIST[*]} " == *" nbdkit-blkio "* ]]; then
    if [[ ! -f $TRIXIE ]]; then
        skip_server nbdkit-blkio "scripts/trixie-root.sh is missing"
    elif ! TRIXIE_DIR=$(bash "$TRIXIE" ensure); then
        skip_server nbdkit-blkio "could not build the trixie chroot (network to the Debian mirror?)"
    fi
fi
[[ ${#SERVER_LIST[@]} -gt 0 ]] || die "no servers left to run"

# ---- scratch space, results, cleanup ----
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-/tmp/blkstack-nbdbench-$STAMP}
mkdir -p "$OUT/logs" "$OUT/fio"
JSON=${JSON:-$OUT/results.json}
POINTS=$OUT/points.jsonl
: > "$POINTS"
WORK=$(mktemp -d /dev/shm/blkstack-nbdbench.XXXXXX)  # tmpfs: image and sockets
IMG=$WORK/disk.img
SERVER_PID=
SERVER_NAME=

stop_server() {
    local pid=$SERVER_PID i
    SERVER_PID=
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "WARNING: $SERVER_NAME (pid $pid) ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_server
    [[ -n ${WORK:-} && -d $WORK ]] && rm -rf --one-file-system "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---- the image: preallocated, real (incompressible, non-zero) data ----
log "creating a ${SIZE_MIB} MiB image with random data in $WORK (tmpfs)"
chunk=$((SIZE_MIB < 64 ? SIZE_MIB : 64))
head -c $((chunk << 20)) /dev/urandom > "$WORK/chunk"
for ((i = 0; i < SIZE_MIB / chunk; i++)); do cat "$WORK/chunk"; done > "$IMG"
rm -f "$WORK/chunk"
truncate -s $((SIZE_MIB << 20)) "$IMG"
sync -f "$IMG"

# ---- servers ----
PORT_NEXT=$((20000 + ($$ * 7) % 30000))
free_port() {
    local p
    while :; do
        p=$PORT_NEXT
        PORT_NEXT=$((PORT_NEXT >= 60000 ? 20000 : PORT_NEXT + 1))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf '%s\n' "$p"
            return
        fi
    done
}

SOCK_SEQ=0
URI=
# start_server NAME TRANSPORT LOG: sets SERVER_PID and URI, waits until it
# answers NBD.
start_server() {
    local name=$1 transport=$2 logf=$3 sock port listen=()
    SOCK_SEQ=$((SOCK_SEQ + 1))
    sock=$WORK/$name-$SOCK_SEQ.sock
    port=
    if [[ $transport == unix ]]; then
        URI="nbd+unix:///?socket=$sock"
    else
        port=$(free_port)
        URI="nbd://127.0.0.1:$port/"
    fi
    SERVER_NAME=$name
    case $name in
        blkstack|blkstack-base)
            local exp=nbd,blockdev=d0 fifo=$WORK/ready-$SOCK_SEQ readyfd line bin=$BLKSTACK
            [[ $name == blkstack ]] || bin=$BASELINE
            if [[ $transport == unix ]]; then exp+=",socket=$sock"; else exp+=",tcp=127.0.0.1:$port"; fi
            mkfifo "$fifo"
            exec {readyfd}<>"$fifo"
            rm -f "$fifo"
            "$bin" serve ${THREADS:+--threads "$THREADS"} \
                --blockdev "io_uring,id=d0,path=$IMG" --export "$exp" --ready-fd "$readyfd" \
                >"$logf" 2>&1 &
            SERVER_PID=$!
            if ! read -r -t 30 -u "$readyfd" line || [[ $line != READY=1* ]]; then
                exec {readyfd}>&-
                tail -n 20 "$logf" >&2 || true
                die "$name did not become ready (log: $logf)"
            fi
            exec {readyfd}>&-
            ;;
        nbdkit-file)
            if [[ $transport == unix ]]; then listen=(-U "$sock"); else listen=(-i 127.0.0.1 -p "$port"); fi
            nbdkit -f "${listen[@]}" file "$IMG" >"$logf" 2>&1 &
            SERVER_PID=$!
            ;;
        nbdkit-blkio)
            # unshare, sh and chroot all exec: $! ends up being nbdkit itself.
            if [[ $transport == unix ]]; then listen=(-U "/bench/${sock##*/}"); else listen=(-i 127.0.0.1 -p "$port"); fi
            bash "$TRIXIE" run --bind "$WORK:/bench" "$TRIXIE_DIR" -- \
                nbdkit -f "${listen[@]}" blkio io_uring path=/bench/disk.img >"$logf" 2>&1 &
            SERVER_PID=$!
            ;;
        qemu-nbd)
            if [[ $transport == unix ]]; then listen=(-k "$sock"); else listen=(-b 127.0.0.1 -p "$port"); fi
            qemu-nbd -f raw --aio=io_uring --cache="$QEMU_CACHE" --persistent -t --shared=16 \
                "${listen[@]}" "$IMG" >"$logf" 2>&1 &
            SERVER_PID=$!
            ;;
    esac
    local i
    for i in $(seq 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 20 "$logf" >&2 || true
            SERVER_PID=
            die "$name ($transport) exited during start-up (log: $logf)"
        fi
        if timeout 5 nbdinfo --size "$URI" >/dev/null 2>&1; then
            [[ $name != nbdkit-blkio ]] || [[ $(readlink "/proc/$SERVER_PID/exe") == */nbdkit ]] ||
                die "nbdkit-blkio: pid $SERVER_PID is $(readlink "/proc/$SERVER_PID/exe"), not nbdkit"
            return 0
        fi
        sleep 0.1
    done
    die "$name ($transport) did not answer NBD at $URI within 30 s (log: $logf)"
}

cpu_ticks() {  # utime+stime of a process, all threads (fields 14 and 15)
    local stat rest f
    stat=$(< "/proc/$1/stat") || die "cannot read /proc/$1/stat"
    rest=${stat##*) }  # fields from 3 on; comm may hold spaces
    read -r -a f <<< "$rest"
    printf '%s\n' $((f[11] + f[12]))
}

# ---- one point ----
run_point() {  # run_point ROUND WORKLOAD TRANSPORT SERVER
    local round=$1 wl=$2 transport=$3 server=$4
    local tag="r$round-$wl-$transport-$server" before after fiojson rw bs qd
    start_server "$server" "$transport" "$OUT/logs/$tag.log"
    before=$(cpu_ticks "$SERVER_PID")
    if [[ $wl == seqread-1m ]]; then
        local t0 t1 copies=0 deadline
        t0=$(date +%s%N)
        deadline=$((t0 + RUNTIME * 1000000000))
        while :; do
            timeout $((RUNTIME + 120)) nbdcopy --request-size=1048576 --requests="$NBDCOPY_REQUESTS" \
                --connections="$JOBS" "$URI" null: 2>>"$OUT/logs/$tag.client.log" ||
                die "nbdcopy failed against $server ($transport): see $OUT/logs/$tag.client.log"
            copies=$((copies + 1))
            t1=$(date +%s%N)
            [[ $t1 -lt $deadline ]] || break
        done
        sleep 0.2  # let the server finish tearing the connections down
        after=$(cpu_ticks "$SERVER_PID")
        "$PY" "$HERE/report.py" point --server "$server" --transport "$transport" --workload "$wl" \
            --round "$round" --cpu-before "$before" --cpu-after "$after" --clk-tck "$CLK_TCK" \
            --nbdcopy-bytes $((copies * (SIZE_MIB << 20))) --nbdcopy-ns $((t1 - t0)) >> "$POINTS"
    else
        rw=${wl%%-*}; bs=${wl#*-}; bs=${bs%%-*}; qd=${wl##*-qd}
        fiojson=$OUT/fio/$tag.json
        timeout $((RUNTIME + 120)) fio --name="$wl" --ioengine=nbd --uri="$URI" --rw="$rw" --bs="$bs" \
            --iodepth="$qd" --numjobs="$JOBS" --group_reporting --time_based --runtime="$RUNTIME" \
            --norandommap --randrepeat=0 --output-format=json --output="$fiojson" \
            >>"$OUT/logs/$tag.client.log" 2>&1 ||
            die "fio failed against $server ($transport): see $OUT/logs/$tag.client.log"
        sleep 0.2
        after=$(cpu_ticks "$SERVER_PID")
        "$PY" "$HERE/report.py" point --server "$server" --transport "$transport" --workload "$wl" \
            --round "$round" --cpu-before "$before" --cpu-after "$after" --clk-tck "$CLK_TCK" \
            --fio "$fiojson" >> "$POINTS"
    fi
    stop_server
}

# ---- description of the setup ----
blkstack_desc="blkstack serve (io_uring blockdev, threads=${THREADS:-default: one per CPU}) $(git -C "$ROOT" describe --always --dirty 2>/dev/null || true)"
nbdkit_file_desc="$(nbdkit --version | head -n1) file plugin, default threads"
nbdkit_blkio_desc="nbdkit 1.42 (trixie chroot) blkio plugin, io_uring driver, real libblkio"
if [[ -n $TRIXIE_DIR ]]; then
    v=$(chroot "$TRIXIE_DIR" dpkg-query -W -f='nbdkit ${Version}, libblkio1 ' nbdkit 2>/dev/null || true)
    v+=$(chroot "$TRIXIE_DIR" dpkg-query -W -f='${Version}' libblkio1 2>/dev/null || true)
    [[ -n $v ]] && nbdkit_blkio_desc="$v (trixie chroot), blkio plugin, io_uring driver"
fi
qemu_desc="$(qemu-nbd --version | head -n1), -f raw --aio=io_uring --cache=$QEMU_CACHE --shared=16"

npoints=$((ROUNDS * ${#WORKLOAD_LIST[@]} * ${#TRANSPORT_LIST[@]} * ${#SERVER_LIST[@]}))
log "results in $OUT; $npoints points of ${RUNTIME} s (about $(((npoints * (RUNTIME * 10 + 25) / 10 + 59) / 60)) min)"
"$PY" - "$OUT/meta.json" <<EOF
import json, sys
json.dump({
  "date": "$STAMP", "host_cpus": $(nproc), "kernel": "$(uname -r)",
  "runtime_s": $RUNTIME, "rounds": $ROUNDS, "jobs": $JOBS, "image_mib": $SIZE_MIB,
  "nbdcopy_requests": $NBDCOPY_REQUESTS, "qemu_cache": "$QEMU_CACHE",
  "fio": "$(fio --version)",
  "servers": "${SERVER_LIST[*]}".split(), "transports": "${TRANSPORT_LIST[*]}".split(),
  "workloads": "${WORKLOAD_LIST[*]}".split(),
  "server_desc": {"blkstack": """$blkstack_desc""", "blkstack-base": """baseline $BASELINE""", "nbdkit-file": """$nbdkit_file_desc""",
                  "nbdkit-blkio": """$nbdkit_blkio_desc""", "qemu-nbd": """$qemu_desc"""},
}, open(sys.argv[1], "w"), indent=1)
EOF

t_start=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS"
    for wl in "${WORKLOAD_LIST[@]}"; do
        for transport in "${TRANSPORT_LIST[@]}"; do
            for server in "${SERVER_LIST[@]}"; do
                run_point "$round" "$wl" "$transport" "$server"
            done
        done
    done
done
log "measured in $((SECONDS - t_start)) s"

"$PY" "$HERE/report.py" report --points "$POINTS" --meta "$OUT/meta.json" --json "$JSON" | tee "$OUT/report.txt"
log "table: $OUT/report.txt  JSON: $JSON"
