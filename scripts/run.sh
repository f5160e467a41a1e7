#!/usr/bin/env bash
# The main job: serve a default disk image over NBD with `blkstack serve`.
#
#   scripts/run.sh [IMAGE [SIZE]]
#
# Installs what is missing (apt-get), builds the release tree, creates IMAGE
# as a sparse file of SIZE if it does not exist (default
# /var/lib/blkstack/disk.img, 1G), prints how to connect, and runs the
# daemon in the foreground until Ctrl-C or SIGTERM (which drain in-flight
# requests first). Environment: BLKSTACK_SOCKET (Unix socket, default
# /run/blkstack/disk.sock), BLKSTACK_TCP (default 127.0.0.1:10809),
# BLKSTACK_CONTROL (control socket, default /run/blkstack/control.sock).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-/var/lib/blkstack/disk.img}
SIZE=${2:-1G}
SOCKET=${BLKSTACK_SOCKET:-/run/blkstack/disk.sock}
TCP=${BLKSTACK_TCP:-127.0.0.1:10809}
CONTROL=${BLKSTACK_CONTROL:-/run/blkstack/control.sock}

scripts/install-deps.sh
scripts/build.sh release >/dev/null
mkdir -p "$(dirname "$IMAGE")" "$(dirname "$SOCKET")" "$(dirname "$CONTROL")"
if [[ ! -e $IMAGE ]]; then
  truncate -s "$SIZE" "$IMAGE"
  echo "created $IMAGE ($SIZE, sparse)"
fi
rm -f "$SOCKET" "$CONTROL"

host=${TCP%:*}
port=${TCP##*:}
cat <<MSG

blkstack serves $IMAGE as NBD export "disk":
  Unix socket  $SOCKET
  TCP          $TCP
Connect with:
  nbdinfo 'nbd+unix:///disk?socket=$SOCKET'
  qemu-img info 'nbd+unix:///disk?socket=$SOCKET'
  qemu-io -f raw 'nbd://$host:$port/disk' -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
  nbdcopy 'nbd+unix:///disk?socket=$SOCKET' - | sha256sum
  modprobe nbd && nbd-client -N disk $host $port /dev/nbd0     (as root, kernel NBD client)
Statistics:
  echo '{"cmd":"stats"}' | socat - UNIX-CONNECT:$CONTROL
Stop with Ctrl-C.

MSG
exec build/tools/blkstack/blkstack serve \
  --blockdev "io_uring,id=disk0,path=$IMAGE" \
  --export "nbd,blockdev=disk0,name=disk,socket=$SOCKET" \
  --export "nbd,blockdev=disk0,name=disk,id=disk-tcp,tcp=$TCP" \
  --control "$CONTROL"
