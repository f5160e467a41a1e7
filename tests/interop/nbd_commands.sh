#!/usr/bin/env bash
# Every NBD command and flag (nbd_commands.py, run by nbdsh) against one
# daemon serving a tmpfs-backed file read-write ("rw") and read-only ("ro").
#
# Usage: nbd_commands.sh BUILD_DIR
source "$(dirname "$0")/nbd_lib.sh" "$1"
need_packages libnbd-bin python3-libnbd

make_tmpfs "$WORK/shm" 512M
export NBD_SOCK=$WORK/nbd.sock NBD_FILE=$WORK/shm/disk.img NBD_SIZE=$((128 << 20))
truncate -s "$NBD_SIZE" "$NBD_FILE"

daemon_start d --threads 2 --blockdev "io_uring,id=disk0,path=$NBD_FILE" \
  --export "nbd,blockdev=disk0,name=rw,socket=$NBD_SOCK" \
  --export "nbd,blockdev=disk0,name=ro,id=ro,readonly=on,description=read-only view,socket=$NBD_SOCK"

step "nbd_commands.py"
nbdsh -n -c - <"$(dirname "$0")/nbd_commands.py" || fail "nbd_commands.py failed"
daemon_alive d
daemon_stop d
