#!/bin/bash
# Unprivileged ublk devices (UBLK_F_UNPRIVILEGED_DEV): the daemon, running as
# an ordinary user, creates, serves and removes a ublk device. The kernel only
# lets it near devices it owns, so a stand-in for the udev rule that ublksrv
# ships gives the new /dev/ublkcN to that user, as a real system would.
# Also checks that root can ask for an unprivileged device, and that an
# ordinary user without the flag is refused with a clear message.
source "$(dirname "$0")/daemon_lib.sh"
vm_modprobe ublk_drv

img=$SCRATCH/disk.img
truncate -s 256M "$img"
USER_ID=65534   # nobody
chmod 0777 "$SCRATCH"
chown "$USER_ID:$USER_ID" "$img"

write_and_verify() {  # write_and_verify DEV: a pattern through the device reaches the image
  head -c $((4 << 20)) /dev/urandom >"$SCRATCH/pattern"
  dd if="$SCRATCH/pattern" of="$1" bs=1M oflag=direct conv=fsync status=none
  dd if="$1" of="$SCRATCH/back" bs=1M count=4 iflag=direct status=none
  cmp "$SCRATCH/pattern" "$SCRATCH/back" || fail "read back through $1 differs"
  cmp -n $((4 << 20)) "$SCRATCH/pattern" "$img" || fail "the image does not hold what was written to $1"
}

log "root asks for an unprivileged device"
start_daemon --blockdev "io_uring,id=d0,path=$img" --export "ublk,blockdev=d0,id=0,unprivileged=on,queues=2"
wait_for_block /dev/ublkb0
write_and_verify /dev/ublkb0
stop_daemon || fail "daemon exit status (root, unprivileged=on)"
wait_gone() { for _ in $(seq 100); do [ -e "$1" ] || return 0; sleep 0.05; done; return 1; }
wait_gone /dev/ublkb0 || fail "/dev/ublkb0 left behind"

log "an ordinary user"
chmod 0666 /dev/ublk-control
# Stand-in for the udev rule: hand new ublk nodes to the user who made them.
( set +e; while :; do chown "$USER_ID:$USER_ID" /dev/ublkc* /dev/ublkb* 2>/dev/null; sleep 0.01; done ) &
udev_pid=$!
DAEMON_WRAPPER=(setpriv --reuid="$USER_ID" --regid="$USER_ID" --clear-groups --inh-caps=-all)

log "without unprivileged=on the kernel refuses, with a clear message"
if "${DAEMON_WRAPPER[@]}" "$BLKSTACK" serve --blockdev "io_uring,id=d0,path=$img" \
    --export "ublk,blockdev=d0,id=0" >"$SCRATCH/refused.log" 2>&1; then
  fail "an ordinary user created a privileged ublk device"
fi
grep -q "unprivileged=on" "$SCRATCH/refused.log" || { cat "$SCRATCH/refused.log" >&2; fail "no clear message"; }
cat "$SCRATCH/refused.log" >&2

start_daemon --blockdev "io_uring,id=d0,path=$img" --export "ublk,blockdev=d0,id=0,unprivileged=on,queues=2"
wait_for_block /dev/ublkb0
[ "$(stat -c %u "/proc/$DAEMON_PID")" = "$USER_ID" ] || fail "the daemon is not running as the user"
write_and_verify /dev/ublkb0
mkfs.ext4 -q -F /dev/ublkb0
e2fsck -fn /dev/ublkb0 >/dev/null || fail "fsck of the file system made through the unprivileged device"
stop_daemon || fail "daemon exit status (user, unprivileged=on)"
wait_gone /dev/ublkb0 || fail "/dev/ublkb0 left behind by the user's daemon"
kill "$udev_pid"
log "PASS"
