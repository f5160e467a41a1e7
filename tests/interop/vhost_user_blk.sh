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
setup_build "${1:-}"
need_pkgs gcc:gcc jq:jq python3:python3 /usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring
make_workdir
BLKSTACK=$BLKSTACK_BUILD/tools/blkstack/blkstack
[[ -x $BLKSTACK ]] || die "$BLKSTACK is missing: build first"

step "real libblkio 1.5 and its examples"
REAL=$("$REPO_ROOT/scripts/libblkio-dev.sh" "${BLKSTACK_LIBBLKIO_DIR:-/var/cache/blkstack/libblkio}") ||
    die "could not fetch libblkio-dev"
REAL_LIBDIR=$REAL/usr/lib/x86_64-linux-gnu
BIN=$WORK/bin; mkdir -p "$BIN"
for prog in blkio-copy blkio-bench; do
    gcc -std=gnu11 -O2 -I"$REAL/usr/include" -o "$BIN/$prog" "$REAL/usr/share/doc/libblkio-dev/examples/$prog.c" \
        -L"$REAL_LIBDIR" -lblkio -lpthread 2>/dev/null || die "$prog does not build against real libblkio"
done
real() { LD_LIBRARY_PATH=$REAL_LIBDIR "$@"; }
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
real timeout 120 "$BIN/blkio-copy" "--input-file=$SRC" --output-blkio=virtio-blk-vhost-user "path=$WORK/rw.sock" ||
    die "blkio-copy into the export failed"
assert_same_file "$SRC" "$DISK" "written through the export: backing file == source [$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%d ms", (b-a)*1000}')]"
: > "$WORK/back.img"
real timeout 120 "$BIN/blkio-copy" --input-blkio=virtio-blk-vhost-user "path=$WORK/rw.sock" "--output-file=$WORK/back.img" ||
    die "blkio-copy out of the export failed"
assert_same_file "$SRC" "$WORK/back.img" "read back through the export == source"

step "two queues"
real timeout 60 "$BIN/blkio-bench" --runtime=1 --readwrite=randwrite --iodepth=8 --num-threads=2 \
    virtio-blk-vhost-user "path=$WORK/rw.sock" > "$WORK/bench2.json" || die "blkio-bench with 2 threads failed"
reply=$(ctl '{"cmd":"stats","id":"rw"}')
jq -e '.exports[0].queue_requests | length == 2 and all(.[]; . > 0)' <<<"$reply" >/dev/null ||
    die "not both queues served: $reply"
jq -e '.exports[0].stats | .requests > 0 and .errors == 0 and .write_bytes > 0' <<<"$reply" >/dev/null ||
    die "stats look wrong: $reply"
pass "both queues served: $(jq -c '.exports[0].queue_requests' <<<"$reply") requests, $(jq -r '.aggregate.kiops' "$WORK/bench2.json") kIOPS randwrite"

step "readonly=on"
: > "$WORK/ro.back"
real timeout 60 "$BIN/blkio-copy" --input-blkio=virtio-blk-vhost-user "path=$WORK/ro.sock" read-only=true "--output-file=$WORK/ro.back" ||
    die "reading the readonly export failed"
assert_same_file "$RO" "$WORK/ro.back" "readonly export reads"
ro_sum=$(sha "$RO")
if real timeout 60 "$BIN/blkio-copy" "--input-file=$OTHER" --output-blkio=virtio-blk-vhost-user "path=$WORK/ro.sock" \
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
real timeout 60 "$BIN/blkio-copy" --input-blkio=virtio-blk-vhost-user "path=$WORK/other.sock" "--output-file=$WORK/other.back" ||
    die "the other export stopped working"
assert_same_file "$OTHER" "$WORK/other.back" "another export still works"
: > "$WORK/back2.img"
real timeout 120 "$BIN/blkio-copy" --input-blkio=virtio-blk-vhost-user "path=$WORK/rw.sock" "--output-file=$WORK/back2.img" ||
    die "the attacked export no longer serves"
assert_same_file "$DISK" "$WORK/back2.img" "the attacked export serves the next front-end (== its backing file)"

step "control socket: remove and add the export"
jq -e '.ok' <<<"$(ctl '{"cmd":"remove-export","id":"other"}')" >/dev/null || die "remove-export failed"
[[ ! -e $WORK/other.sock ]] || die "socket left behind after remove-export"
jq -e '.ok' <<<"$(ctl "{\"cmd\":\"add-export\",\"spec\":\"vhost-user-blk,blockdev=d2,id=other,socket=$WORK/other.sock\"}")" >/dev/null ||
    die "add-export failed"
: > "$WORK/other.back"
real timeout 60 "$BIN/blkio-copy" --input-blkio=virtio-blk-vhost-user "path=$WORK/other.sock" "--output-file=$WORK/other.back" ||
    die "the re-added export does not serve"
assert_same_file "$OTHER" "$WORK/other.back" "export removed and added again over the control socket"
alive "at the end"
grep -q "dropping the front-end" "$WORK/daemon.log" || die "no dropped front-end logged"
