#!/usr/bin/env bash
# The rbd driver against a real (throwaway, single-node) Ceph cluster and
# Ceph's own tools:
#   - blkstack copy file -> rbd, read back with `rbd export`; `rbd import`,
#     then blkstack copy rbd -> file; checksums both ways;
#   - `blkstack serve` exporting an rbd image over NBD, written and read by
#     nbdcopy, checked against `rbd export`;
#   - a snapshot opened through the driver: the data of the snapshot, and
#     writes refused;
#   - the OSD killed under a running write load through the NBD export:
#     requests fail (op-timeout), nothing hangs, the daemon stays up; the
#     OSD started again, data acknowledged (written and flushed) before the
#     kill reads back intact and new writes work.
#
# Usage: rbd.sh BUILD_DIR
source "$(dirname "$0")/nbd_lib.sh" "$1"
need_packages libnbd-bin python3-libnbd ceph-mon ceph-osd ceph-common uuid-runtime

CLUSTER=$WORK/ceph
SOCK=$WORK/nbd.sock
MIB=64

step "start a single-node cluster (bluestore: it survives the OSD kill below)"
# Stopped at exit whatever happens.
at_exit "$SRC/scripts/ceph-cluster.sh" stop "$CLUSTER"
CEPH_OSD_STORE=bluestore "$SRC/scripts/ceph-cluster.sh" start "$CLUSTER" >/dev/null
CONF=$CLUSTER/ceph.conf
export CEPH_CONF=$CONF
rbd_dev() { printf 'rbd,pool=rbd,image=%s,conf=%s%s' "$1" "$CONF" "${2:-}"; }

step "blkstack copy: file -> rbd image, checked with rbd export"
rbd create --size ${MIB}M vol1
random_file "$WORK/a.img" $MIB
timeout 120 "$BLKSTACK" copy --no-progress --no-sparse "io_uring,path=$WORK/a.img" "$(rbd_dev vol1)" ||
  fail "blkstack copy into rbd failed"
rbd export --no-progress vol1 "$WORK/a.out" >/dev/null
same_content "$WORK/a.img" "$WORK/a.out"
log "ok: file -> rbd: $(sum_of "$WORK/a.out" | cut -c1-16)"

step "rbd import, then blkstack copy: rbd image -> file"
random_file "$WORK/b.img" $MIB
rbd import --no-progress "$WORK/b.img" vol2 >/dev/null
truncate -s ${MIB}M "$WORK/b.out"
timeout 120 "$BLKSTACK" copy --no-progress "$(rbd_dev vol2)" "io_uring,path=$WORK/b.out" ||
  fail "blkstack copy out of rbd failed"
same_content "$WORK/b.img" "$WORK/b.out"
log "ok: rbd -> file: $(sum_of "$WORK/b.out" | cut -c1-16)"

step "blkstack serve: rbd over NBD, nbdcopy both ways"
rbd create --size ${MIB}M vol3
# A snapshot that does not exist yet: the error names it.
expect_fail timeout 60 "$BLKSTACK" info "$(rbd_dev vol1 ,snapshot=s1)"
grep -q 'rbd/vol1@s1' "$WORK/last.err" || fail "the error does not name the snapshot: $(cat "$WORK/last.err")"
rbd snap create --no-progress vol1@s1
daemon_start d --blockdev "$(rbd_dev vol3 ,id=vol3,op-timeout=5)" \
  --blockdev "$(rbd_dev vol1 ,id=vol1snap,snapshot=s1)" \
  --export "nbd,blockdev=vol3,name=vol3,socket=$SOCK" \
  --export "nbd,blockdev=vol1snap,name=snap,socket=$SOCK"
U3="nbd+unix:///vol3?socket=$SOCK"
USNAP="nbd+unix:///snap?socket=$SOCK"
random_file "$WORK/c.img" $MIB
timeout 120 nbdcopy --requests=16 "$WORK/c.img" "$U3" || fail "nbdcopy into the rbd export failed"
timeout 120 nbdcopy "$U3" "$WORK/c.out" || fail "nbdcopy out of the rbd export failed"
same_content "$WORK/c.img" "$WORK/c.out"
rbd export --no-progress vol3 "$WORK/c.rbd" >/dev/null
same_content "$WORK/c.img" "$WORK/c.rbd"
log "ok: nbdcopy in and out, rbd export agrees: $(sum_of "$WORK/c.img" | cut -c1-16)"

step "snapshot: read-only, and frozen at the snapshot"
# Change the image after the snapshot: the snapshot export must not see it.
timeout 120 "$BLKSTACK" copy --no-progress "io_uring,path=$WORK/b.img" "$(rbd_dev vol1)" >/dev/null
nbdinfo --json "$USNAP" | jq -e '.exports[0]."is_read_only" == true' >/dev/null ||
  fail "the snapshot export is not read-only: $(nbdinfo --json "$USNAP")"
timeout 60 nbdcopy "$USNAP" "$WORK/snap.out" || fail "nbdcopy out of the snapshot failed"
same_content "$WORK/a.img" "$WORK/snap.out"
expect_fail timeout 60 "$BLKSTACK" copy --no-progress "io_uring,path=$WORK/b.img" "$(rbd_dev vol1 ,snapshot=s1)"
log "ok: snapshot reads the data of s1, writes refused: $(head -c 200 "$WORK/last.err" | tr '\n' ' ')"

step "kill the OSD under a write load"
# Acknowledged before the load: the first half of vol3 (c.img), written
# and flushed by nbdcopy above. The load writes only the second half.
head -c $((MIB / 2 << 20)) "$WORK/c.img" >"$WORK/c.first"
cat >"$WORK/load.py" <<'PY'
import os, sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
buf = os.urandom(1 << 20)
n = 0
t0 = time.monotonic()
try:
    while time.monotonic() - t0 < 90:
        off = size // 2 + (n % (size // 2 >> 20)) * (1 << 20)
        h.pwrite(buf, off)
        n += 1
        if n % 8 == 0:
            h.flush()
except nbd.Error as e:
    print("load: write %d failed after %.1f s: %s" % (n, time.monotonic() - t0, e), flush=True)
    sys.exit(3)
print("load: no error in 90 s (%d writes)" % n)
sys.exit(0)
PY
python3 "$WORK/load.py" "$U3" >"$WORK/load.log" 2>&1 &
LOAD=$!
sleep 2
kill -0 $LOAD 2>/dev/null || fail "the load stopped before the kill: $(cat "$WORK/load.log")"
t_kill=$SECONDS
"$SRC/scripts/ceph-cluster.sh" kill-osd "$CLUSTER"
rc=0
# op-timeout=5: the request in flight must fail within about that.
timeout 60 tail --pid=$LOAD -f /dev/null || fail "the write load still hangs 60 s after the OSD was killed"
wait $LOAD || rc=$?
[[ $rc == 3 ]] || fail "the write load did not see an error (status $rc): $(cat "$WORK/load.log")"
log "ok: $(cat "$WORK/load.log") ($((SECONDS - t_kill)) s after the kill)"
daemon_alive d
# Reads of a dead OSD fail too, and do not hang.
expect_fail timeout 60 nbdcopy "$U3" "$WORK/dead.out"
daemon_alive d
log "ok: reads fail while the OSD is down, the daemon is up"

step "start the OSD again: acknowledged data intact, new writes work"
"$SRC/scripts/ceph-cluster.sh" start-osd "$CLUSTER"
timeout 120 nbdcopy "$U3" "$WORK/after.out" || fail "nbdcopy out of the export failed after the OSD came back"
head -c $((MIB / 2 << 20)) "$WORK/after.out" >"$WORK/after.first"
same_content "$WORK/c.first" "$WORK/after.first"
rbd export --no-progress vol3 "$WORK/after.rbd" >/dev/null
head -c $((MIB / 2 << 20)) "$WORK/after.rbd" >"$WORK/after.rbd.first"
same_content "$WORK/c.first" "$WORK/after.rbd.first"
timeout 120 nbdcopy "$WORK/b.img" "$U3" || fail "nbdcopy into the export failed after the OSD came back"
rbd export --no-progress vol3 "$WORK/b.rbd" >/dev/null
same_content "$WORK/b.img" "$WORK/b.rbd"
daemon_stop d
log "ok: acknowledged data intact after the OSD restart; the export serves writes again"
log "PASS ($((SECONDS - _T0)) s)"
