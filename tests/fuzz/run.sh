#!/usr/bin/env bash
# Runs every NBD libFuzzer target for SECONDS each (in parallel, one per core)
# starting from the checked-in seeds. Fails if any target finds a crash, a
# leak, an invariant violation, a timeout or runaway memory.
#   cmake -S . -B build-fuzz -G Ninja -DBLKSTACK_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++
#   ninja -C build-fuzz && tests/fuzz/run.sh build-fuzz 600
set -euo pipefail
BUILD=${1:?usage: run.sh BUILD_DIR SECONDS}
SECONDS_EACH=${2:?usage: run.sh BUILD_DIR SECONDS}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nbd-fuzz.XXXXXX")
TARGETS=(nbd_handshake_fuzz nbd_request_fuzz vhost_user_fuzz vhost_virtqueue_fuzz vhost_driver_ring_fuzz)

pids=()
for t in "${TARGETS[@]}"; do
  bin="$BUILD/tests/fuzz/$t"
  [[ -x $bin ]] || { echo "missing $bin (configure with -DBLKSTACK_FUZZ=ON)"; exit 1; }
  mkdir -p "$WORK/$t/corpus" "$WORK/$t/artifacts"
  cp "$HERE/corpus/$t/"* "$WORK/$t/corpus/"
  # The working corpus grows in $WORK; seeds in the tree stay small and ours.
  "$bin" "$WORK/$t/corpus" -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 \
    -artifact_prefix="$WORK/$t/artifacts/" >"$WORK/$t/log" 2>&1 &
  pids+=($!)
done

status=0
for i in "${!TARGETS[@]}"; do
  t=${TARGETS[$i]}
  if wait "${pids[$i]}"; then rc=0; else rc=$?; fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$t/log" | grep -o '[0-9]*$' || echo '?')
  echo "$t: exit $rc, executions $execs, corpus $(ls "$WORK/$t/corpus" | wc -l) inputs"
  if [[ $rc -ne 0 ]] || ls "$WORK/$t/artifacts/"* >/dev/null 2>&1; then
    status=1
    echo "---- $t FAILED; log tail:"
    tail -40 "$WORK/$t/log"
    ls -l "$WORK/$t/artifacts/" || true
  fi
done
echo "logs and corpora in $WORK"
exit $status
