#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# nbdkit_blkio.sh BUILD_DIR
#
# nbdkit 1.42's blkio plugin (Debian trixie, unchanged, in a chroot) serving
# a file through OUR libblkio.so.1 (io_uring driver) on a Unix socket:
#  - /proc/PID/maps of the nbdkit process shows our library and no other;
#  - nbdinfo sees the right size and capabilities;
#  - nbdcopy writes a random image through it and reads it back: checksums
#    match the source, and so does the file on disk;
#  - qemu-io over NBD drives writes with FUA, write-zeroes, trim and flush
#    through the plugin into our library; the result is checked byte by byte;
#  - a read-only export (nbdkit -r) serves the right data and refuses
#    writes.
set -euo pipefail
TEST_NAME=nbdkit_blkio
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/chroot.sh"
setup_build "${1:-}"
need_pkgs jq:jq sha256sum:coreutils setpriv:util-linux
make_workdir
setup_chroot

SIZE_MIB=16
random_image "$WORK/src.raw" "$SIZE_MIB"
truncate -s "${SIZE_MIB}M" "$WORK/disk.img"
SOCK=/scratch/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
log "source: $SIZE_MIB MiB random, sha256 $(sha "$WORK/src.raw")"

step "nbdkit --dump-plugin blkio loads with our library"
in_root nbdkit --dump-plugin blkio > "$WORK/dump.txt" 2>&1 || { cat "$WORK/dump.txt"; die "nbdkit --dump-plugin blkio failed on our library"; }
grep -q '^name=blkio$' "$WORK/dump.txt" || { cat "$WORK/dump.txt"; die "--dump-plugin output lacks name=blkio"; }
pass "nbdkit --dump-plugin blkio: $(grep -E '^(version|thread_model)=' "$WORK/dump.txt" | paste -sd' ' -)"

###########################################################################
step "read-write export: nbdkit blkio io_uring path=disk.img"
start_daemon nbdkit-rw /scratch/nbdkit.pid \
    nbdkit -f -v -U "$SOCK" -P /scratch/nbdkit.pid blkio io_uring path=/scratch/disk.img \
    get=driver get=capacity get=supports-fua-natively
NBDKIT=$DAEMON_PID
assert_maps_our_lib "$NBDKIT" "nbdkit (read-write export)"
in_root nbdinfo --no-content --json "$URI" > "$WORK/info.json" || die "nbdinfo failed"
jq -e --argjson size $((SIZE_MIB << 20)) '.exports[0] |
    ."export-size" == $size and .is_read_only == false and .can_flush and .can_trim and .can_zero and .can_fua' \
    "$WORK/info.json" > /dev/null || { cat "$WORK/info.json"; die "nbdinfo: unexpected size or capabilities"; }
pass "nbdinfo: size $((SIZE_MIB << 20)), writable, can_flush/can_trim/can_zero/can_fua"
grep -q "get capacity = $((SIZE_MIB << 20))" "$WORK/nbdkit-rw.log" ||
    die "nbdkit debug log lacks 'get capacity = $((SIZE_MIB << 20))' (get= reads our property after connect)"
pass "plugin read our properties: $(grep -o 'get [a-z-]* = .*' "$WORK/nbdkit-rw.log" | sort -u | paste -sd';' -)"

t0=$EPOCHREALTIME
in_root nbdcopy --flush /scratch/src.raw "$URI" || die "nbdcopy into the export failed"
in_root nbdcopy "$URI" /scratch/back.raw || die "nbdcopy out of the export failed"
ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }')
assert_same_file "$WORK/src.raw" "$WORK/back.raw" "nbdcopy write + read back through nbdkit/our libblkio [${ms} ms]"
assert_same_file "$WORK/src.raw" "$WORK/disk.img" "the file behind the export holds the written image"

# qemu-io as an NBD client: writes (plain, FUA, async), write-zeroes, trim,
# flush, each read back with pattern verification.
in_root qemu-io -f raw "$URI" \
    -c 'write -P 0xab 1M 64k' \
    -c 'read -P 0xab 1M 64k' \
    -c 'write -f -P 0xcd 2M 128k' \
    -c 'read -P 0xcd 2M 128k' \
    -c 'aio_write -P 0x5a 3M 4k' \
    -c 'aio_flush' \
    -c 'read -P 0x5a 3M 4k' \
    -c 'write -z 4M 256k' \
    -c 'read -P 0 4M 256k' \
    -c 'discard 6M 1M' \
    -c 'flush' \
    -c 'read -P 0xab 1M 64k' \
    > "$WORK/qemu-io.out" 2>&1 || rc=$?
[[ ${rc:-0} -eq 0 ]] || { cat "$WORK/qemu-io.out"; die "qemu-io over NBD exited with status $rc"; }
if grep -qiE 'fail|error|Pattern verification' "$WORK/qemu-io.out"; then
    cat "$WORK/qemu-io.out"
    die "qemu-io over NBD reported an error"
fi
pass "qemu-io over NBD: write, FUA write, aio_write+aio_flush, write -z, discard, flush, all read back with -P"
# The file on disk: the source image with those regions replaced (the
# discarded 1 MiB is unspecified by the NBD and libblkio specs: not compared).
cp "$WORK/src.raw" "$WORK/expect.raw"
fill() { head -c "$3" /dev/zero | tr '\0' "$1" | dd of="$WORK/expect.raw" bs=4k seek=$(($2 / 4096)) conv=notrunc status=none; }
fill '\253' $((1 << 20)) $((64 << 10))
fill '\315' $((2 << 20)) $((128 << 10))
fill '\132' $((3 << 20)) 4096
fill '\000' $((4 << 20)) $((256 << 10))
cmp -n $((6 << 20)) "$WORK/expect.raw" "$WORK/disk.img" || die "disk.img before the discarded range differs from the expected image"
cmp -i $((7 << 20)) "$WORK/expect.raw" "$WORK/disk.img" || die "disk.img after the discarded range differs from the expected image"
pass "disk.img matches byte for byte what qemu-io wrote (discarded range excluded)"
grep -qE 'blkio: (trim|zero)' "$WORK/nbdkit-rw.log" || die "nbdkit log shows no trim/zero call to the plugin"
stop_daemon "$NBDKIT"
grep -q 'blkio: unload plugin' "$WORK/nbdkit-rw.log" || { tail "$WORK/nbdkit-rw.log"; die "nbdkit did not shut down cleanly"; }
pass "nbdkit shut down cleanly"
cp "$WORK/disk.img" "$WORK/final.raw"

###########################################################################
ro_case() {
    rm -f "$WORK/nbd.sock"   # nbdkit leaves its socket behind on SIGTERM
    local label=$1; shift
    step "read-only export ($label)"
    start_daemon "nbdkit-ro" /scratch/nbdkit.pid \
        nbdkit -f -v -U "$SOCK" -P /scratch/nbdkit.pid "$@"
    local pid=$DAEMON_PID
    assert_maps_our_lib "$pid" "nbdkit (read-only export, $label)"
    in_root nbdinfo --no-content --json "$URI" > "$WORK/info-ro.json" || die "nbdinfo failed"
    jq -e '.exports[0].is_read_only == true' "$WORK/info-ro.json" > /dev/null ||
        { cat "$WORK/info-ro.json"; die "export is not read-only ($label)"; }
    pass "nbdinfo: is_read_only=true"
    grep -q 'blkio: open readonly=1' "$WORK/nbdkit-ro.log" || die "the plugin did not open the device read-only"
    rm -f "$WORK/back-ro.raw"
    in_root nbdcopy "$URI" /scratch/back-ro.raw || die "nbdcopy out of the read-only export failed"
    assert_same_file "$WORK/final.raw" "$WORK/back-ro.raw" "read back through the read-only export"
    if in_root nbdcopy /scratch/src.raw "$URI" > "$WORK/ro-write.out" 2>&1; then
        die "writing into the read-only export ($label) succeeded"
    fi
    pass "writing into it fails: $(grep -m1 -iE 'read.only|error|denied|EPERM|EROFS|EBADF' "$WORK/ro-write.out" || head -1 "$WORK/ro-write.out")"
    assert_same_file "$WORK/final.raw" "$WORK/disk.img" "the file is unchanged"
    stop_daemon "$pid"
}
ro_case "nbdkit -r" -r blkio io_uring path=/scratch/disk.img
# Not covered, because of nbdkit 1.42's plugin and not of the library (real
# libblkio 1.5 behaves the same): the plugin refuses read-only=true ("use the
# nbdkit -r flag"), and it passes every value through nbdkit_absolute_path,
# so direct=true reaches libblkio as "//true" and is rejected.
