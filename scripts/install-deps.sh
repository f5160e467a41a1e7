#!/usr/bin/env bash
# Installs everything blkstack needs to build and test on Debian 12, from
# Debian's own packages. Idempotent: does nothing when all are present.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config git
  liburing-dev libfmt-dev libspdlog-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libgnutls28-dev libsystemd-dev libnbd-dev libtomlplusplus-dev
  # sanitizers and fuzzing
  clang lld libclang-rt-14-dev
  # tests, benchmarks, real peers
  valgrind fio gnutls-bin libnbd-bin python3-libnbd jq nbdkit nbd-client qemu-utils qemu-system-x86 qemu-block-extra
  ceph-mon ceph-osd ceph-common librbd-dev uuid-runtime
  debootstrap busybox-static kmod e2fsprogs xz-utils zstd cpio python3 procps util-linux iproute2 socat
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
