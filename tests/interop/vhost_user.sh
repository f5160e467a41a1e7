#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# vhost_user.sh BUILD_DIR
#
# vhost-user-blk, client x server matrix:
#   client: real  - libblkio 1.5.0's virtio-blk-vhost-user driver (Debian trixie)
#           ours  - our libblkio.so.1's virtio-blk-vhost-user driver
#   server: qsd      - Debian 12's qemu-storage-daemon vhost-user-blk export
#           blkstack - `blkstack serve --export vhost-user-blk,...`
# The clients are libblkio's own example programs (blkio-info, blkio-copy,
# blkio-bench), the same binaries for both libraries (LD_LIBRARY_PATH).
#
# For each server: vhost_probe.py (a raw vhost-user front-end) checks the
# features, protocol features, queue count and virtio-blk config (capacity,
# num_queues, BLK_F_RO on a read-only export, BLK_F_FLUSH).
# For each pair, on a 64 MiB image with 2 queues:
#   - blkio-info sees the capacity;
#   - blkio-copy reads a random image out (read path), writes another random
#     image in (the backing file must then match), reads it back, and notices
#     a byte changed behind the server's back;
#   - blkio-bench: randread depth 32 on 2 threads (2 queues), randwrite depth
#     8, randread depth 1 with --poll: exit 0 and IOPS > 0;
#   - QEMU 10's blkio block driver (trixie chroot) on the same library:
#     qemu-img convert both ways, qemu-io write/read -P, write -z, aio,
#     512-byte and FUA writes, discard, flush, checked in the backing file;
#   - (our driver) blkstack info and blkstack copy, both ways;
#   - a read-only export refuses blkio-copy's writes and the image is unchanged;
#   - SIGKILL of the server under a running blkio-bench (depth 32) makes the
#     client exit non-zero within 15 s (no hang); under blkio-copy (a blocking
#     blkioq_do_io() with no timeout) OUR driver must fail the request too
#     (real libblkio 1.5 waits forever there: logged, not asserted).
# Pairs with OUR driver or export are skipped, saying so, only while that code
# is absent from the build (see vhost_client_available / vhost_export_available
# in vhost_lib.sh); BLKSTACK_VHOST_REQUIRE=1 makes absence a failure.
set -euo pipefail
TEST_NAME=vhost_user
source "$(dirname "$0")/vhost_lib.sh"
source "$(dirname "$0")/chroot.sh"
vhost_setup "${1:-}"
setup_chroot

SIZE_MIB=64
QUEUES=2
PASSED=() SKIPPED=()

pair() {  # SERVER CLIENT
    local server=$1 client=$2 p="$1-$2"
    local img=$WORK/$p.img sock=$WORK/$p.sock a=$WORK/$p.a b=$WORK/$p.b out=$WORK/$p.out
    local cap iops

    step "$client client <-> $server export"
    random_image "$a" "$SIZE_MIB"
    random_image "$b" "$SIZE_MIB"
    cp "$a" "$img"
    start_vhost_server "$server" "$img" "$sock" "$QUEUES"

    cap=$(blkio_run "$client" blkio-info virtio-blk-vhost-user "path=$sock" capacity) ||
        die "$p: blkio-info failed"
    [[ $cap == $((SIZE_MIB << 20)) ]] || die "$p: capacity $cap, want $((SIZE_MIB << 20))"
    pass "$p: blkio-info capacity $cap"

    libblkio_copy_vhost "$client" out "$sock" "$out" || die "$p: blkio-copy device -> file failed"
    assert_same_file "$a" "$out" "$p: blkio-copy reads the image the server was started on"

    libblkio_copy_vhost "$client" in "$b" "$sock" || die "$p: blkio-copy file -> device failed"
    assert_same_file "$b" "$img" "$p: blkio-copy wrote a random image; the backing file matches"

    libblkio_copy_vhost "$client" out "$sock" "$out" || die "$p: blkio-copy device -> file failed"
    assert_same_file "$b" "$out" "$p: blkio-copy reads it back"

    # A byte changed in the backing file behind the server's back is seen:
    # the reads come from the file, not from anything cached on the way.
    printf '\x5a' | dd of="$img" bs=1 seek=$((3 << 20)) conv=notrunc status=none
    cmp -s "$b" "$img" && printf '\xa5' | dd of="$img" bs=1 seek=$((3 << 20)) conv=notrunc status=none
    libblkio_copy_vhost "$client" out "$sock" "$out" || die "$p: blkio-copy device -> file failed"
    [[ $(cmp "$b" "$out" 2>&1 || true) == *"byte $((3 * 1024 * 1024 + 1))"* ]] ||
        die "$p: a byte changed in the backing file at 3 MiB is not seen through the export: $(cmp "$b" "$out" 2>&1)"
    assert_same_file "$img" "$out" "$p: a byte changed in the backing file is read through the export"

    libblkio_bench_vhost "$client" "$sock" randread 4096 32 1 --num-threads=$QUEUES ||
        die "$p: blkio-bench randread depth 32, $QUEUES threads failed"
    iops=$BENCH_IOPS
    ((iops > 0)) || die "$p: blkio-bench randread: $iops IOPS"
    pass "$p: blkio-bench randread 4k depth 32, $QUEUES threads/queues: $iops IOPS"
    libblkio_bench_vhost "$client" "$sock" randwrite 4096 8 1 || die "$p: blkio-bench randwrite failed"
    iops=$BENCH_IOPS
    ((iops > 0)) || die "$p: blkio-bench randwrite: $iops IOPS"
    pass "$p: blkio-bench randwrite 4k depth 8: $iops IOPS"
    libblkio_bench_vhost "$client" "$sock" randread 4096 1 1 --poll || die "$p: blkio-bench --poll failed"
    iops=$BENCH_IOPS
    ((iops > 0)) || die "$p: blkio-bench --poll: $iops IOPS"
    pass "$p: blkio-bench randread 4k depth 1 --poll: $iops IOPS"
    vhost_server_alive "$sock" || die "$p: the $server server died during the benchmarks"
    qemu_blkio_checks "$server" "$client" "$img" "$sock"
    if [[ $client == ours ]]; then
        # Our own tools on the driver: blkstack info, and blkstack copy (many
        # requests in flight, its own memory regions) both ways.
        "$BLKSTACK" info "virtio-blk-vhost-user,path=$sock" >"$WORK/info.out" 2>&1 ||
            { cat "$WORK/info.out"; die "$p: blkstack info failed"; }
        awk '$1 == "capacity" {print $2}' "$WORK/info.out" | grep -qx "$((SIZE_MIB << 20))" ||
            { cat "$WORK/info.out"; die "$p: blkstack info shows no capacity $((SIZE_MIB << 20))"; }
        pass "$p: blkstack info: capacity $((SIZE_MIB << 20)), needs-mem-regions $(awk '$1 == "needs-mem-regions" {print $2}' "$WORK/info.out")"
        timeout 60 "$BLKSTACK" copy "io_uring,path=$a" "virtio-blk-vhost-user,path=$sock" >"$WORK/copy.out" 2>&1 ||
            { cat "$WORK/copy.out"; die "$p: blkstack copy file -> vhost-user failed"; }
        assert_same_file "$a" "$img" "$p: blkstack copy io_uring -> virtio-blk-vhost-user; the backing file matches"
        truncate -s 0 "$out"; truncate -s ${SIZE_MIB}M "$out"
        timeout 60 "$BLKSTACK" copy "virtio-blk-vhost-user,path=$sock" "io_uring,path=$out" >"$WORK/copy.out" 2>&1 ||
            { cat "$WORK/copy.out"; die "$p: blkstack copy vhost-user -> file failed"; }
        assert_same_file "$a" "$out" "$p: blkstack copy virtio-blk-vhost-user -> io_uring"
    fi
    stop_vhost_server "$sock"

    # Read-only export.
    cp "$a" "$img"
    start_vhost_server "$server" "$img" "$sock" 1 readonly
    if libblkio_copy_vhost "$client" in "$b" "$sock" >"$WORK/ro.err" 2>&1; then
        die "$p: blkio-copy into a read-only export succeeded"
    fi
    assert_same_file "$a" "$img" "$p: read-only export refused blkio-copy's writes ($(head -c 120 "$WORK/ro.err" | tr '\n' ' '))"
    libblkio_copy_vhost "$client" out "$sock" "$out" read-only=true || die "$p: blkio-copy from a read-only export failed"
    assert_same_file "$a" "$out" "$p: read-only export serves reads"
    stop_vhost_server "$sock"

    kill_under_load "$server" "$client"
    rm -f "$img" "$a" "$b" "$out"
    PASSED+=("$p")
}

# qemu_blkio_checks SERVER CLIENT IMG SOCK: QEMU 10's blkio block driver (in
# the trixie chroot; $WORK is /scratch there) as the front-end, on CLIENT's
# library: Debian's libblkio 1.5 in the chroot (real) or ours (--lib).
qemu_blkio_checks() {
    local server=$1 client=$2 img=$3 sock=$4 p="$1-$2" c=$WORK/$1-$2.c
    local opts="driver=virtio-blk-vhost-user,path=/scratch/${sock#"$WORK/"},cache.direct=on"
    local run=(in_root)
    [[ $client == real ]] && run=(timeout -k 5 300 "$REPO_ROOT/scripts/trixie-root.sh" run --bind "$WORK:/scratch" "$ROOT" --)
    random_image "$c" "$SIZE_MIB"
    "${run[@]}" qemu-img convert -n -m 8 -W -f raw "/scratch/${c#"$WORK/"}" --target-image-opts "$opts" \
        >"$WORK/qemu.out" 2>&1 || { cat "$WORK/qemu.out"; die "$p: qemu-img convert raw -> virtio-blk-vhost-user failed"; }
    assert_same_file "$c" "$img" "$p: QEMU 10 qemu-img convert -m 8 -W raw -> virtio-blk-vhost-user; the backing file matches"
    "${run[@]}" qemu-img convert --image-opts "$opts" -O raw "/scratch/$p.qemu.raw" \
        >"$WORK/qemu.out" 2>&1 || { cat "$WORK/qemu.out"; die "$p: qemu-img convert virtio-blk-vhost-user -> raw failed"; }
    assert_same_file "$c" "$WORK/$p.qemu.raw" "$p: QEMU 10 qemu-img convert virtio-blk-vhost-user -> raw"
    rm -f "$WORK/$p.qemu.raw"
    "${run[@]}" qemu-io --image-opts "$opts" \
        -c 'write -P 0xab 1M 64k' -c 'read -P 0xab 1M 64k' \
        -c 'write -z 2M 1M' -c 'read -P 0 2M 1M' \
        -c 'aio_write -P 0xcd 4M 128k' -c 'aio_write -P 0xce 5M 512' -c aio_flush \
        -c 'read -P 0xcd 4M 128k' -c 'read -P 0xce 5M 512' \
        -c 'write -f -P 0x5e 6M 4k' -c 'discard 8M 1M' -c flush \
        >"$WORK/qemu.out" 2>&1 || { cat "$WORK/qemu.out"; die "$p: qemu-io failed"; }
    if grep -qiE 'fail|error|mismatch' "$WORK/qemu.out" || [[ $(grep -c '^read ' "$WORK/qemu.out") != 4 ]] ||
        ! grep -q '^discard 1048576/1048576' "$WORK/qemu.out"; then
        cat "$WORK/qemu.out"; die "$p: qemu-io reported a failure (or did not run every command)"
    fi
    cmp -s <(head -c 65536 /dev/zero | tr '\0' '\253') <(dd if="$img" bs=64k skip=16 count=1 status=none) ||
        die "$p: qemu-io's write -P 0xab at 1 MiB is not in the backing file"
    cmp -s <(head -c $((1 << 20)) /dev/zero) <(dd if="$img" bs=1M skip=2 count=1 status=none) ||
        die "$p: qemu-io's write -z at 2 MiB is not zeros in the backing file"
    cmp -s <(head -c 131072 /dev/zero | tr '\0' '\315') <(dd if="$img" bs=128k skip=32 count=1 status=none) ||
        die "$p: qemu-io's aio_write -P 0xcd at 4 MiB is not in the backing file"
    cmp -s <(head -c 4096 /dev/zero | tr '\0' '\136') <(dd if="$img" bs=4k skip=1536 count=1 status=none) ||
        die "$p: qemu-io's FUA write -P 0x5e at 6 MiB is not in the backing file"
    pass "$p: QEMU 10 qemu-io: write/read -P, write -z, aio_write + aio_flush, 512-byte write, FUA write, discard, flush; the backing file matches"
    rm -f "$c"
}

# kill_under_load SERVER CLIENT: the server dies (SIGKILL) under a running
# client.
#  1. blkio-bench randread depth 32: must exit non-zero within 15 s.
#     (blkio-bench aborts by itself when a completion takes over 500 ms.)
#  2. blkio-copy of a 4 GiB sparse image to /dev/null: blkioq_do_io() waits
#     for one completion with no timeout. Our driver must notice the closed
#     socket and fail the request (exit non-zero within 15 s). Real libblkio
#     1.5 does not (it waits forever): recorded, not asserted.
kill_under_load() {
    local server=$1 client=$2 p="$1-$2" rc t0 dt bpid
    local img=$WORK/$p.kill.img sock=$WORK/$p.kill.sock
    truncate -s 4G "$img"
    start_vhost_server "$server" "$img" "$sock" "$QUEUES"
    t0=$SECONDS
    # (a subshell: bash's own "Aborted" job report stays out of the log)
    ( LD_LIBRARY_PATH=$(_client_libdir "$client") exec timeout -k 5 30 "$VHOST_BIN/blkio-bench" \
        --runtime=20 --iodepth=32 --readwrite=randread virtio-blk-vhost-user "path=$sock" \
        >"$WORK/kill.out" 2>"$WORK/kill.err" ) &
    bpid=$!
    sleep 1
    kill -0 "$bpid" 2>/dev/null || { cat "$WORK/kill.err"; die "$p: blkio-bench ended before the server was killed"; }
    kill_vhost_server "$sock"
    rc=0; wait "$bpid" 2>/dev/null || rc=$?
    dt=$((SECONDS - t0 - 1))
    [[ $rc -ne 0 ]] || die "$p: blkio-bench exited 0 although the server was killed under it"
    [[ $rc -ne 124 && $rc -ne 137 ]] || die "$p: blkio-bench hung after the server was killed (timeout)"
    ((dt <= 15)) || die "$p: blkio-bench took $dt s to notice the server's death"
    pass "$p: server killed under blkio-bench depth 32: client exited $rc within ${dt} s ($(head -c 100 "$WORK/kill.err" | tr '\n' ' '))"

    start_vhost_server "$server" "$img" "$sock" "$QUEUES"
    local limit=30
    [[ $client == real ]] && limit=2   # known to hang: do not wait long
    t0=$SECONDS
    ( LD_LIBRARY_PATH=$(_client_libdir "$client") exec timeout -k 2 "$limit" "$VHOST_BIN/blkio-copy" \
        --input-blkio=virtio-blk-vhost-user "path=$sock" --output-file=/dev/null \
        >"$WORK/kill.out" 2>"$WORK/kill.err" ) &
    bpid=$!
    sleep 0.5
    kill -0 "$bpid" 2>/dev/null || { cat "$WORK/kill.err"; die "$p: blkio-copy of 4 GiB ended before the server was killed"; }
    kill_vhost_server "$sock"
    rc=0; wait "$bpid" 2>/dev/null || rc=$?
    dt=$((SECONDS - t0))
    if [[ $client == real ]]; then
        if [[ $rc -eq 124 || $rc -eq 137 ]]; then
            log "known: real libblkio 1.5 blocks forever in blkioq_do_io() once the server is gone (blkio-copy killed by a ${limit} s timeout)"
        else
            log "note: real libblkio's blkio-copy exited $rc after the server was killed ($(head -c 100 "$WORK/kill.err" | tr '\n' ' '))"
        fi
    else
        [[ $rc -ne 0 ]] || die "$p: blkio-copy exited 0 although the server was killed under it"
        [[ $rc -ne 124 && $rc -ne 137 ]] || die "$p: blkio-copy (blocking blkioq_do_io) hung for $limit s after the server was killed: the driver must fail requests once the socket closes"
        pass "$p: server killed under blkio-copy: blocking do_io failed, client exited $rc within ${dt} s ($(head -c 100 "$WORK/kill.err" | tr '\n' ' '))"
    fi
    rm -f "$img"
}

# probe_server SERVER: what the export offers a front-end (vhost_probe.py:
# GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_CONFIG), writable
# with 2 queues and read-only. Asserts what every front-end here needs; the
# rest is printed next to qemu-storage-daemon's for comparison.
probe_server() {
    local server=$1 img=$WORK/probe.img sock=$WORK/probe.sock j
    step "$server export: vhost-user features and virtio-blk config"
    truncate -s ${SIZE_MIB}M "$img"
    start_vhost_server "$server" "$img" "$sock" "$QUEUES"
    timeout 20 python3 "$INTEROP_DIR/vhost_probe.py" "$sock" >"$WORK/probe.$server.json" ||
        die "$server: vhost_probe.py failed"
    j=$WORK/probe.$server.json
    jq -e '.feature_names | index("F_VERSION_1")' "$j" >/dev/null || die "$server: no VIRTIO_F_VERSION_1"
    jq -e '.feature_names | index("VHOST_USER_F_PROTOCOL_FEATURES")' "$j" >/dev/null || die "$server: no VHOST_USER_F_PROTOCOL_FEATURES"
    jq -e '.protocol_feature_names | index("MQ") and index("CONFIG")' "$j" >/dev/null ||
        die "$server: protocol features MQ and CONFIG are needed (libblkio and QEMU ask for the queue count and the config)"
    jq -e --argjson q "$QUEUES" '.queue_num >= $q' "$j" >/dev/null || die "$server: GET_QUEUE_NUM $(jq .queue_num "$j") < $QUEUES"
    jq -e --argjson q "$QUEUES" '.config.num_queues == $q' "$j" >/dev/null || die "$server: config num_queues $(jq .config.num_queues "$j"), want $QUEUES"
    jq -e --argjson c $((SIZE_MIB << 11)) '.config.capacity_sectors == $c' "$j" >/dev/null ||
        die "$server: config capacity $(jq .config.capacity_sectors "$j") sectors, want $((SIZE_MIB << 11))"
    jq -e '.feature_names | index("BLK_F_RO") | not' "$j" >/dev/null || die "$server: a writable export offers BLK_F_RO"
    jq -e '.feature_names | index("BLK_F_FLUSH")' "$j" >/dev/null || die "$server: no BLK_F_FLUSH (a guest's flushes would be dropped)"
    pass "$server: $(jq -r '.feature_names | join(" ")' "$j")"
    pass "$server: protocol $(jq -r '.protocol_feature_names | join(" ")' "$j"); queues $(jq .queue_num "$j"); config $(jq -c .config "$j")"
    stop_vhost_server "$sock"
    start_vhost_server "$server" "$img" "$sock" 1 readonly
    timeout 20 python3 "$INTEROP_DIR/vhost_probe.py" "$sock" >"$WORK/probe.$server.ro.json" ||
        die "$server: vhost_probe.py failed (read-only)"
    jq -e '.feature_names | index("BLK_F_RO")' "$WORK/probe.$server.ro.json" >/dev/null || die "$server: a read-only export does not offer BLK_F_RO"
    pass "$server: a read-only export offers BLK_F_RO"
    stop_vhost_server "$sock"
    rm -f "$img"
    if [[ $server != qsd && -f $WORK/probe.qsd.json ]]; then
        log "features only qsd offers: $(jq -rn --slurpfile a "$WORK/probe.qsd.json" --slurpfile b "$j" '$a[0].feature_names - $b[0].feature_names | join(" ")')"
        log "features only $server offers: $(jq -rn --slurpfile a "$WORK/probe.qsd.json" --slurpfile b "$j" '$b[0].feature_names - $a[0].feature_names | join(" ")')"
    fi
}

for server in qsd blkstack; do
    if [[ $server == qsd ]] || vhost_require_or_skip ours-export; then
        probe_server "$server"
    fi
    for client in real ours; do
        skip=""
        if [[ $server == blkstack ]] && ! vhost_require_or_skip ours-export; then
            skip=$(vhost_why_unavailable ours-export)
        elif [[ $client == ours ]] && ! vhost_require_or_skip ours-client; then
            skip=$(vhost_why_unavailable ours-client)
        fi
        if [[ -n $skip ]]; then
            log "SKIP $client client <-> $server export: $skip"
            SKIPPED+=("$server-$client")
            continue
        fi
        pair "$server" "$client"
    done
done

step "summary"
log "passed:  ${PASSED[*]:-none}"
if [[ ${#SKIPPED[@]} -gt 0 ]]; then
    log "skipped: ${SKIPPED[*]} (code not built yet; BLKSTACK_VHOST_REQUIRE=1 makes this fail)"
else
    log "skipped: none"
fi
[[ $VHOST_QSD_CRASHES -eq 0 ]] || log "qemu-storage-daemon 7.2 hit its known abort $VHOST_QSD_CRASHES time(s) and was restarted (see KNOWN PEER BUG above)"
[[ ${#PASSED[@]} -ge 1 ]] || die "no pair ran"
