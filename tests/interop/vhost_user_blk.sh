#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# vhost_user_blk.sh BUILD_DIR
#
# The vhost-user-blk export of `blkstack serve` against real libblkio 1.5's
# virtio-blk-vhost-user client (libblkio's own blkio-copy / blkio-bench,
# built against the real header and run with the real library) and a
# hostile front-end (vhost_user_blk_bad_input.py):
#  - 64 MiB of random data written through the export and read back,
#    identical to the source and to the backing file;
#  - 2 queues: both served (per-queue request counts from the control socket);
#  - a readonly=on export refuses writes and serves reads;
#  - malformed messages and bad descriptor chains do not crash the daemon,
#    and the other exports keep working;
#  - the export removed and added again over the control socket.
set -euo pipefail
TEST_NAME=vhost_user_blk
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/vhost_lib.sh"
need_pkgs python3:python3

step "real libblkio 1.5 and its examples"
vhost_setup "${1:-}"
# The examples on real libblkio, bounded like every vhost_lib client run.
real() { blkio_run real "$@"; }
pass "blkio-copy and blkio-bench built against real libblkio ($(readlink -f "$REAL_LIBDIR/libblkio.so.1"))"

SHM=$(mktemp -d /dev/shm/blkstack-interop.XXXXXX)
echo $$ > "$SHM/.owner"
register_cleanup "rm -rf '$SHM'"
SRC=$SHM/src.img DISK=$SHM/disk.img RO=$SHM/ro.img OTHER=$SHM/other.img
random_image "$SRC" 64
truncate -s 64M "$DISK"
random_image "$RO" 8
random_image "$OTHER" 8
CTL=$WORK/ctl.sock

step "start the daemon: three vhost-user-blk exports"
"$BLKSTACK" serve --threads 2 --control "$CTL" \
    --blockdev "io_uring,id=d0,path=$DISK" --blockdev "io_uring,id=d1,path=$RO" --blockdev "io_uring,id=d2,path=$OTHER" \
    --export "vhost-user-blk,blockdev=d0,id=rw,socket=$WORK/rw.sock,queues=2" \
    --export "vhost-user-blk,blockdev=d1,id=ro,socket=$WORK/ro.sock,readonly=on" \
    --export "vhost-user-blk,blockdev=d2,id=other,socket=$WORK/other.sock" > "$WORK/daemon.log" 2>&1 &
DPID=$!
register_cleanup "kill $DPID; sleep 0.5; kill -9 $DPID"
for _ in $(seq 100); do [[ -S $CTL ]] && break; sleep 0.1; done
[[ -S $CTL ]] || { cat "$WORK/daemon.log"; die "the daemon did not start"; }
alive() { kill -0 "$DPID" 2>/dev/null || { tail -30 "$WORK/daemon.log"; die "the daemon died ($1)"; }; }
ctl() {
    python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()+b"\n"); print(s.makefile().readline())' "$CTL" "$1"
}
pass "daemon pid $DPID"

step "blkio-copy: 64 MiB of random data through the export and back"
t0=$EPOCHREALTIME
real blkio-copy "--input-file=$SRC" --output-blkio=virtio-blk-vhost-user "path=$WORK/rw.sock" ||
    die "blkio-copy into the export failed"
assert_same_file "$SRC" "$DISK" "written through the export: backing file == source [$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%d ms", (b-a)*1000}')]"
: > "$WORK/back.img"
real blkio-copy --input-blkio=virtio-blk-vhost-user "path=$WORK/rw.sock" "--output-file=$WORK/back.img" ||
    die "blkio-copy out of the export failed"
assert_same_file "$SRC" "$WORK/back.img" "read back through the export == source"

step "two queues"
libblkio_bench_vhost real "$WORK/rw.sock" randwrite 4096 8 1 --num-threads=2 || die "blkio-bench with 2 threads failed"
reply=$(ctl '{"cmd":"stats","id":"rw"}')
jq -e '.exports[0].queue_requests | length == 2 and all(.[]; . > 0)' <<<"$reply" >/dev/null ||
    die "not both queues served: $reply"
jq -e '.exports[0].stats | .requests > 0 and .errors == 0 and .write_bytes > 0' <<<"$reply" >/dev/null ||
    die "stats look wrong: $reply"
pass "both queues served: $(jq -c '.exports[0].queue_requests' <<<"$reply") requests, $BENCH_IOPS IOPS randwrite"

step "readonly=on"
: > "$WORK/ro.back"
real blkio-copy --input-blkio=virtio-blk-vhost-user "path=$WORK/ro.sock" read-only=true "--output-file=$WORK/ro.back" ||
    die "reading the readonly export failed"
assert_same_file "$RO" "$WORK/ro.back" "readonly export reads"
ro_sum=$(sha "$RO")
if real blkio-copy "--input-file=$OTHER" --output-blkio=virtio-blk-vhost-user "path=$WORK/ro.sock" \
        > "$WORK/ro.out" 2>&1; then
    die "writing to the readonly export succeeded"
fi
[[ $(sha "$RO") == "$ro_sum" ]] || die "the readonly export's backing file changed"
pass "libblkio refuses a writable instance of the readonly export ($(head -1 "$WORK/ro.out"))"
# A front-end that writes anyway (our own client) gets IOERR.
python3 "$INTEROP_DIR/vhost_user_blk_bad_input.py" "$WORK/ro.sock" "$RO" ro readonly || die "readonly checks failed"
[[ $(sha "$RO") == "$ro_sum" ]] || die "the readonly export's backing file changed"
pass "writes sent to the readonly export fail with IOERR; the file is unchanged"

step "a hostile front-end"
python3 "$INTEROP_DIR/vhost_user_blk_bad_input.py" "$WORK/rw.sock" "$DISK" rw || die "hostile front-end checks failed"
alive "after the hostile front-end"
: > "$WORK/other.back"
real blkio-copy --input-blkio=virtio-blk-vhost-user "path=$WORK/other.sock" "--output-file=$WORK/other.back" ||
    die "the other export stopped working"
assert_same_file "$OTHER" "$WORK/other.back" "another export still works"
: > "$WORK/back2.img"
real blkio-copy --input-blkio=virtio-blk-vhost-user "path=$WORK/rw.sock" "--output-file=$WORK/back2.img" ||
    die "the attacked export no longer serves"
assert_same_file "$DISK" "$WORK/back2.img" "the attacked export serves the next front-end (== its backing file)"

step "control socket: remove and add the export"
jq -e '.ok' <<<"$(ctl '{"cmd":"remove-export","id":"other"}')" >/dev/null || die "remove-export failed"
[[ ! -e $WORK/other.sock ]] || die "socket left behind after remove-export"
jq -e '.ok' <<<"$(ctl "{\"cmd\":\"add-export\",\"spec\":\"vhost-user-blk,blockdev=d2,id=other,socket=$WORK/other.sock\"}")" >/dev/null ||
    die "add-export failed"
: > "$WORK/other.back"
real blkio-copy --input-blkio=virtio-blk-vhost-user "path=$WORK/other.sock" "--output-file=$WORK/other.back" ||
    die "the re-added export does not serve"
assert_same_file "$OTHER" "$WORK/other.back" "export removed and added again over the control socket"
alive "at the end"
grep -q "dropping the front-end" "$WORK/daemon.log" || die "no dropped front-end logged"
