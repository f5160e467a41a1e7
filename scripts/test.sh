#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run):
#
#   scripts/test.sh [--fuzz-seconds N] [--skip-vm] [--skip-interop]
#
# 1. installs what is missing (apt-get; scripts/install-deps.sh);
# 2. release build: unit tests, fuzz corpus replays, interop tests against
#    real peers (libblkio's examples, nbdkit, QEMU, libnbd, qemu-img/qemu-io,
#    TLS, hostile clients) and VM tests (ublk, the kernel's NBD client) in the
#    VM lab under QEMU;
# 3. ASan+UBSan build: unit tests, fuzz corpus replays, and the hostile-client
#    NBD test against the sanitized daemon;
# 4. TSan build: unit tests (two queues on two threads, the daemon's reactors);
# 5. libFuzzer build (clang): every NBD fuzz target for a bounded time.
# Stops at the first failing step, and says which.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=60
SKIP_VM=0
SKIP_INTEROP=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --fuzz-seconds) FUZZ_SECONDS=$2; shift ;;
    --skip-vm) SKIP_VM=1 ;;
    --skip-interop) SKIP_INTEROP=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

t0=$SECONDS
step() { echo; echo "==== [test.sh +$((SECONDS - t0))s] $*"; }
trap 'rc=$?; [[ $rc -eq 0 ]] || echo "==== [test.sh] FAILED (exit $rc) at: $current"' EXIT
current="install dependencies"

step "$current"
scripts/install-deps.sh

current="release build"
step "$current"
scripts/build.sh release

exclude=()
[[ $SKIP_VM == 1 ]] && exclude+=(vm)
[[ $SKIP_INTEROP == 1 ]] && exclude+=(interop)
current="release tests"
step "$current"
if [[ ${#exclude[@]} -gt 0 ]]; then
  pattern=$(IFS='|'; echo "${exclude[*]}")
  ctest --test-dir build --output-on-failure -LE "$pattern"
else
  ctest --test-dir build --output-on-failure
fi

current="ASan+UBSan build"
step "$current"
# Unit tests, and the daemon for the hostile-client test.
scripts/build.sh asan unit-tests blkstack
current="ASan+UBSan tests"
step "$current"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan --output-on-failure -LE 'vm|interop'
if [[ $SKIP_INTEROP == 0 ]]; then
  current="hostile NBD clients against the ASan+UBSan daemon"
  step "$current"
  tests/interop/nbd_bad_input.sh build-asan
fi

current="TSan build"
step "$current"
scripts/build.sh tsan unit-tests
current="TSan tests"
step "$current"
TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build-tsan --output-on-failure -LE 'vm|interop'

current="libFuzzer build"
step "$current"
cmake -S . -B build-fuzz -G Ninja -DBLKSTACK_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang >/dev/null
ninja -C build-fuzz
current="fuzzing ${FUZZ_SECONDS}s per target"
step "$current"
tests/fuzz/run.sh build-fuzz "$FUZZ_SECONDS"

step "all tests passed in $((SECONDS - t0)) s"
