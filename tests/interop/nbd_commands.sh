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

CTL=$WORK/ctl.sock
daemon_start d --threads 2 --control "$CTL" --blockdev "io_uring,id=disk0,path=$NBD_FILE" \
  --export "nbd,blockdev=disk0,name=rw,id=rw,socket=$NBD_SOCK" \
  --export "nbd,blockdev=disk0,name=ro,id=ro,readonly=on,description=read-only view,socket=$NBD_SOCK"

step "nbd_commands.py"
nbdsh -n -c - <"$(dirname "$0")/nbd_commands.py" || fail "nbd_commands.py failed"

# What a reactor learnt about where the device has data is reused: one
# allocation query (SEEK_DATA/SEEK_HOLE, a page-cache walk to the next hole)
# serves every BLOCK_STATUS and hole-aware read inside the extent, and a
# write-zeroes makes it ask again, never answer from stale memory.
step "allocation queries are remembered, and forgotten when holes may appear"
layout_queries() { ctl_ok "$CTL" '{"cmd":"stats","id":"rw"}' | jq '.exports[0].stats.layout_queries'; }
# nbdsh prelude: a connection to "rw" with base:allocation, and a collector
# of BLOCK_STATUS extents in `seen`; the data area is at A.
BS_PRELUDE='
import os
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri("nbd+unix:///rw?socket=" + os.environ["NBD_SOCK"])
MiB = 1 << 20
A = 100 * MiB
seen = []
def on_extents(ctx, offset, entries, err):
    seen.append(list(entries))
    return 0
'
nbdsh -u "nbd+unix:///rw?socket=$NBD_SOCK" -c '
import os
MiB = 1 << 20
A = 100 * MiB
h.zero(10 * MiB, A)
h.pwrite(os.urandom(8 * MiB), A)
h.flush()
' || fail "preparing the data area"
q0=$(layout_queries)
nbdsh -n -c "$BS_PRELUDE"'
for i in range(200):
    seen.clear()
    off = A + i * 40960
    h.block_status(4096, off, on_extents, nbd.CMD_FLAG_REQ_ONE)
    assert seen == [[4096, 0]], "block status at %d: %r" % (off, seen)
for i in range(100):
    off = A + i * 65536
    got = h.pread(65536, off)
    assert len(got) == 65536 and got != bytes(65536), "read at %d" % off
' || fail "block status and reads in the data area"
q1=$(layout_queries)
((q1 - q0 >= 1 && q1 - q0 <= 2)) || fail "200 block status queries and 100 reads in one data extent made $((q1 - q0)) allocation queries (want 1-2)"
nbdsh -n -c "$BS_PRELUDE"'
# Learn the extent on this connection (its reactor), then punch a hole in it.
h.block_status(4096, A + 4 * MiB, on_extents, nbd.CMD_FLAG_REQ_ONE)
assert seen == [[4096, 0]], "before write-zeroes: %r" % seen
seen.clear()
h.zero(64 * 1024, A + 4 * MiB)
h.block_status(4096, A + 4 * MiB, on_extents, nbd.CMD_FLAG_REQ_ONE)
assert seen == [[4096, 3]], "after write-zeroes: %r" % seen
seen.clear()
h.block_status(65536, A + 4 * MiB - 4096, on_extents)
assert seen == [[4096, 0, 61440, 3]], "across the new hole: %r" % seen
' || fail "block status after write-zeroes"
q2=$(layout_queries)
((q2 > q1)) || fail "write-zeroes did not make the export ask the device again"
echo "allocation queries: $((q1 - q0)) for 300 requests in one extent, $((q2 - q1)) after write-zeroes"
daemon_alive d
daemon_stop d
