#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/nbd/profile.sh - where blkstack serve's CPU per NBD request goes.
# Runs the daemon with one reactor on a tmpfs image under one fixed fio (or
# nbdcopy) workload and reports, per request:
#   counts    io_uring_enter calls, SQEs by opcode, context switches (perf
#             tracepoints / software events, counted: little overhead)
#   perf      perf record -g (cpu-clock) of the daemon: top symbols, by thread
#   callgrind valgrind --tool=callgrind on the daemon (slow; user space only)
#
# Usage: bench/nbd/profile.sh [--mode counts|perf|callgrind] [--workload W]
#                             [--runtime S] [--transport unix|tcp]
#                             [--blkstack PATH] [--out DIR]
#   W: randread-4k-qd1 randread-4k-qd32 (default) randwrite-4k-qd1
#      randwrite-4k-qd32 seqread-1m
# Needs root (perf tracepoints). Installs perf/valgrind/fio with apt-get.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=counts
WL=randread-4k-qd32
RUNTIME=5
TRANSPORT=unix
BLKSTACK=$ROOT/build/tools/blkstack/blkstack
OUT=

die() { printf 'profile: ERROR: %s\n' "$*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --mode) MODE=${2:?}; shift 2 ;;
        --workload) WL=${2:?}; shift 2 ;;
        --runtime) RUNTIME=${2:?}; shift 2 ;;
        --transport) TRANSPORT=${2:?}; shift 2 ;;
        --blkstack) BLKSTACK=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
done
[[ $(id -u) -eq 0 ]] || die "run as root"
[[ -x $BLKSTACK ]] || die "no blkstack binary at $BLKSTACK (build it: cmake -S . -B build -G Ninja && ninja -C build)"
need() {
    command -v "$1" >/dev/null 2>&1 && return
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null ||
        { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null; }
}
need fio fio
need nbdcopy libnbd-bin
need jq jq
case $MODE in
    counts|perf) need perf linux-perf ;;
    callgrind) need valgrind valgrind ;;
    *) die "unknown mode $MODE" ;;
esac

OUT=${OUT:-/tmp/blkstack-profile-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$(mktemp -d /dev/shm/blkstack-profile.XXXXXX)
PID=
cleanup() {
    [[ -n $PID ]] && { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

head -c 64M /dev/urandom > "$WORK/chunk"
for i in 1 2 3 4 5 6 7 8; do cat "$WORK/chunk"; done > "$WORK/img"   # 512 MiB of data
rm -f "$WORK/chunk"
if [[ $TRANSPORT == unix ]]; then
    EXP="socket=$WORK/s.sock"; URI="nbd+unix:///?socket=$WORK/s.sock"
else
    PORT=$((30000 + $$ % 20000)); EXP="tcp=127.0.0.1:$PORT"; URI="nbd://127.0.0.1:$PORT/"
fi
PRE=()
[[ $MODE == callgrind ]] && PRE=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --collect-atstart=no)
"${PRE[@]}" "$BLKSTACK" serve --threads 1 --blockdev "io_uring,id=d0,path=$WORK/img" \
    --export "nbd,blockdev=d0,$EXP" > "$OUT/daemon.log" 2>&1 &
PID=$!
for i in $(seq 100); do nbdinfo --size "$URI" >/dev/null 2>&1 && break; sleep 0.2; done
nbdinfo --size "$URI" >/dev/null 2>&1 || die "daemon did not come up (log: $OUT/daemon.log)"

load() {  # prints requests completed
    if [[ $WL == seqread-1m ]]; then
        local n=0 t0=$SECONDS
        while ((SECONDS - t0 < RUNTIME)); do
            nbdcopy --request-size=1048576 --requests=16 --connections=1 "$URI" null:
            n=$((n + 512))
        done
        echo "$n"
    else
        local rw=${WL%%-*} qd=${WL##*-qd}
        fio --name=p --ioengine=nbd --uri="$URI" --rw="$rw" --bs=4k --iodepth="$qd" --time_based \
            --runtime="$RUNTIME" --norandommap --output-format=json --output="$OUT/fio.json" >/dev/null
        jq '[.jobs[].read.total_ios, .jobs[].write.total_ios] | add' "$OUT/fio.json"
    fi
}

case $MODE in
    counts)
        perf stat -x, -o "$OUT/perf-stat.csv" -p "$PID" \
            -e syscalls:sys_enter_io_uring_enter -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete \
            -e context-switches -e task-clock &
        SP=$!
        sleep 0.3
        reqs=$(load)
        kill -INT "$SP"; wait "$SP" || true
        perf record -q -e io_uring:io_uring_submit_req -p "$PID" -o "$OUT/opcodes.data" -- sleep 1 &
        RP=$!
        sleep 0.2; RUNTIME=1 load >/dev/null || true; wait "$RP" || true
        echo "workload $WL over $TRANSPORT, $reqs requests"
        awk -F, -v n="$reqs" '$3 != "" && $1 ~ /^[0-9.]+$/ {
            if ($3 == "task-clock") printf "  %-40s %12.0f  %8.2f us CPU per request\n", $3 " (ms)", $1, $1 * 1000 / n
            else printf "  %-40s %12.0f  %8.3f per request\n", $3, $1, $1 / n }' "$OUT/perf-stat.csv"
        echo "SQE opcodes (1 s sample):"
        perf script -i "$OUT/opcodes.data" 2>/dev/null | grep -o 'opcode [A-Z_]*' | sort | uniq -c | sort -rn | sed 's/^/  /'
        ;;
    perf)
        perf record -q -e cpu-clock -F 2000 -g -p "$PID" -o "$OUT/perf.data" -- sleep $((RUNTIME + 1)) &
        RP=$!
        sleep 0.3
        reqs=$(load)
        wait "$RP" || true
        echo "workload $WL over $TRANSPORT, $reqs requests; perf data in $OUT/perf.data"
        perf report -i "$OUT/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -5
        perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30
        ;;
    callgrind)
        sleep 1
        callgrind_control -i on "$PID" >/dev/null
        reqs=$(load)
        callgrind_control -i off "$PID" >/dev/null
        callgrind_control -d "$PID" >/dev/null
        kill -TERM "$PID"; wait "$PID" || true; PID=
        echo "workload $WL over $TRANSPORT, $reqs requests (under valgrind: slow)"
        f=$(ls -t "$OUT"/callgrind.out* | head -n1)
        callgrind_annotate --inclusive=no "$f" 2>/dev/null | head -40
        ;;
esac
echo "raw output in $OUT"
