#!/usr/bin/env bash
# Builds blkstack. Usage: scripts/build.sh [release|asan|tsan] [NINJA TARGET...]
# (default: release, everything). Build trees: build/, build-asan/, build-tsan/.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
case "$kind" in
  release) dir=build; flags=() ;;
  asan) dir=build-asan; flags=(-DBLKSTACK_SANITIZE=address,undefined) ;;
  tsan) dir=build-tsan; flags=(-DBLKSTACK_SANITIZE=thread) ;;
  *) echo "usage: $0 [release|asan|tsan]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" -G Ninja "${flags[@]}" >/dev/null
shift || true
ninja -C "$dir" "$@"
