#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# libblkio_examples.sh BUILD_DIR
#
# libblkio's own example programs (blkio-info, blkio-copy, blkio-bench, from
# Debian trixie's libblkio-dev, fetched at test time) compiled UNCHANGED
# against our include/blkio.h and linked against our libblkio.so.1, then run
# side by side with the real libblkio 1.5.0 (same binaries, other
# LD_LIBRARY_PATH: the two libraries are ABI compatible).
#
#  (a) blkio-info: every property name real libblkio's io_uring driver
#      accepts is accepted by ours, and every name it rejects ours rejects
#      with the same errno.
#  (b) blkio-copy: byte-identical copies io_uring -> io_uring (buffered and
#      direct=true), file <-> io_uring, with both libraries, and with a
#      binary compiled against the real header.
#  (c) blkio-bench: randread (iodepth 1 and 32) and randwrite, event-driven
#      and --poll, on a tmpfs file and on our null driver: completes and
#      prints sane JSON.
set -euo pipefail
TEST_NAME=libblkio_examples
source "$(dirname "$0")/lib.sh"
setup_build "${1:-}"

need_pkgs gcc:gcc /usr/include/stdio.h:libc6-dev jq:jq sha256sum:coreutils \
    /usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring
make_workdir

step "fetch real libblkio 1.5 (trixie libblkio-dev + libblkio1)"
REAL=$("$REPO_ROOT/scripts/libblkio-dev.sh" "${BLKSTACK_LIBBLKIO_DIR:-/var/cache/blkstack/libblkio}") ||
    die "could not fetch libblkio-dev"
EXAMPLES=$REAL/usr/share/doc/libblkio-dev/examples
REAL_LIBDIR=$REAL/usr/lib/x86_64-linux-gnu
REAL_HDR_DIR=$REAL/usr/include
OUR_LIBDIR=$BLKSTACK_LIBDIR
log "real libblkio: $REAL_LIBDIR/libblkio.so.1.5.0"
log "our libblkio:  $BLKSTACK_LIB"

step "compile blkio-info, blkio-copy, blkio-bench unchanged against our include/blkio.h"
BIN=$WORK/bin; mkdir -p "$BIN" "$BIN/realhdr"
CFLAGS=(-std=gnu11 -O2 -g -Wall -Wextra)
# Warnings about the example's own lines (grep exits 1 when there are none).
own_warnings() { { grep -o "$prog\.c:[0-9]*:[0-9]*: warning: .*" "$1" || [[ $? -eq 1 ]]; } | sort; }
for prog in blkio-info blkio-copy blkio-bench; do
    src=$EXAMPLES/$prog.c
    # Against our header, linked with our library.
    gcc "${CFLAGS[@]}" -I"$REPO_ROOT/include" -o "$BIN/$prog" "$src" \
        -L"$OUR_LIBDIR" -lblkio -lpthread 2> "$WORK/$prog.ours.warn" ||
        { cat "$WORK/$prog.ours.warn"; die "$prog does not compile against our blkio.h"; }
    # Against the real header, for reference: same warnings, no more.
    gcc "${CFLAGS[@]}" -I"$REAL_HDR_DIR" -o "$BIN/realhdr/$prog" "$src" \
        -L"$REAL_LIBDIR" -lblkio -lpthread 2> "$WORK/$prog.real.warn" ||
        { cat "$WORK/$prog.real.warn"; die "$prog does not compile against the real blkio.h"; }
    # Compare warnings about the example's own lines (header paths differ).
    own_warnings "$WORK/$prog.ours.warn" > "$WORK/$prog.ours.w"
    own_warnings "$WORK/$prog.real.warn" > "$WORK/$prog.real.w"
    if ! diff -u "$WORK/$prog.real.w" "$WORK/$prog.ours.w" > "$WORK/$prog.wdiff"; then
        cat "$WORK/$prog.wdiff"
        die "$prog: compiler warnings differ between the real blkio.h and ours (see diff above)"
    fi
    if grep -q 'blkio\.h' "$WORK/$prog.ours.warn"; then
        cat "$WORK/$prog.ours.warn"
        die "$prog: our blkio.h itself causes warnings"
    fi
    # The binary must need libblkio.so.1 and resolve it to ours.
    ldd_out=$(LD_LIBRARY_PATH=$OUR_LIBDIR ldd "$BIN/$prog")
    grep -q "libblkio.so.1 => $OUR_LIBDIR/libblkio.so.1" <<<"$ldd_out" ||
        die "$prog does not resolve libblkio.so.1 to ours: $ldd_out"
    pass "$prog compiles (same $(wc -l < "$WORK/$prog.ours.w") warnings as with the real header) and links to our libblkio.so.1"
done

with_real() { LD_LIBRARY_PATH=$REAL_LIBDIR "$@"; }
with_ours() { LD_LIBRARY_PATH=$OUR_LIBDIR "$@"; }
# Sanity: the two LD_LIBRARY_PATHs really load two different libraries.
real_map=$(LD_LIBRARY_PATH=$REAL_LIBDIR ldd "$BIN/blkio-info" | awk '/libblkio/ {print $3}')
our_map=$(LD_LIBRARY_PATH=$OUR_LIBDIR ldd "$BIN/blkio-info" | awk '/libblkio/ {print $3}')
[[ $(realpath "$real_map") == "$(realpath "$REAL_LIBDIR/libblkio.so.1.5.0")" ]] || die "real run would load $real_map"
[[ $(realpath "$our_map") == "$BLKSTACK_LIB" ]] || die "our run would load $our_map"

###########################################################################
step "(a) blkio-info: the same property names succeed on both libraries (io_uring)"
# Candidates: every property name in the manual (common properties and all
# drivers' properties: those of other drivers must fail on both), plus
# io_uring's driver properties and a few names no library has.
zcat "$REAL/usr/share/doc/libblkio-dev/blkio.rst.gz" |
    grep -oE '^ *[a-z][a-z0-9_-]* \((bool|int|str|uint64|u64)[,)]' |
    awk '{print $1}' > "$WORK/cands.manual"
[[ $(wc -l < "$WORK/cands.manual") -ge 30 ]] || die "found only $(wc -l < "$WORK/cands.manual") property names in the manual; parser broken?"
printf '%s\n' path fd direct read-only num-entries \
    no-such-property Capacity 'capacity ' size block-size latency-ns > "$WORK/cands.extra"
sort -u "$WORK/cands.manual" "$WORK/cands.extra" | grep -v '^$' > "$WORK/cands"
log "$(wc -l < "$WORK/cands") candidate names ($(wc -l < "$WORK/cands.manual") from blkio.rst)"

IMG=$WORK/info.img
random_image "$IMG" 4
# query_all LIB_RUNNER OUTFILE [PROPS...]: one blkio-info run per name (it
# exits at the first failure). Lines: "OK name value" or "ERR name strerror".
query_all() {
    local runner=$1 out=$2 name res; shift 2
    : > "$out"
    while IFS= read -r name; do
        if res=$("$runner" "$BIN/blkio-info" io_uring "path=$IMG" "$@" "$name" 2>&1); then
            printf 'OK\t%s\t%s\n' "$name" "$res" >> "$out"
        else
            # "Failed to query "NAME" property: STRERROR: MESSAGE"
            res=$(sed -n 's/^Failed to query ".*" property: \([^:]*\):.*/\1/p' <<<"$res" | head -1)
            [[ -n $res ]] || res="(unexpected output)"
            printf 'ERR\t%s\t%s\n' "$name" "$res" >> "$out"
        fi
    done < "$WORK/cands"
}
compare_info() {
    local label=$1; shift
    query_all with_real "$WORK/info.real.$label" "$@"
    query_all with_ours "$WORK/info.ours.$label" "$@"
    awk -F'\t' '$1 == "OK" {print $2}' "$WORK/info.real.$label" > "$WORK/ok.real.$label"
    awk -F'\t' '$1 == "OK" {print $2}' "$WORK/info.ours.$label" > "$WORK/ok.ours.$label"
    local n_real n_ours
    n_real=$(wc -l < "$WORK/ok.real.$label"); n_ours=$(wc -l < "$WORK/ok.ours.$label")
    [[ $n_real -ge 25 ]] || die "real libblkio accepted only $n_real names ($label): harness broken?"
    if ! diff -u "$WORK/ok.real.$label" "$WORK/ok.ours.$label" > "$WORK/ok.diff.$label"; then
        sed 's/^-/  only real libblkio: /; s/^+/  only ours:          /' "$WORK/ok.diff.$label" | grep -E '^  only' || true
        die "($label) the set of queryable properties differs from real libblkio (- real, + ours)"
    fi
    pass "($label) the same $n_ours property names succeed on both libraries"
    # Rejected names must be rejected with the same errno.
    awk -F'\t' '$1 == "ERR" {print $2 "\t" $3}' "$WORK/info.real.$label" > "$WORK/err.real.$label"
    awk -F'\t' '$1 == "ERR" {print $2 "\t" $3}' "$WORK/info.ours.$label" > "$WORK/err.ours.$label"
    if ! diff -u "$WORK/err.real.$label" "$WORK/err.ours.$label"; then
        die "($label) rejected names fail with a different errno than in real libblkio (- real, + ours)"
    fi
    pass "($label) the same $(wc -l < "$WORK/err.ours.$label") names are rejected, with the same errno ($(cut -f2 "$WORK/err.ours.$label" | sort -u | paste -sd, -))"
    # Values: informational, they may legitimately differ.
    join -t$'\t' <(awk -F'\t' '$1 == "OK" {print $2 "\t" $3}' "$WORK/info.real.$label" | sort) \
                 <(awk -F'\t' '$1 == "OK" {print $2 "\t" $3}' "$WORK/info.ours.$label" | sort) |
        awk -F'\t' '$2 != $3 { printf "    value differs: %-24s real=%s ours=%s\n", $1, $2, $3 }'
}
compare_info buffered
compare_info direct direct=true
compare_info read-only read-only=true

# The JSON output mode (types are inferred by trying get_bool, get_int,
# get_uint64, get_str in turn) must produce the same JSON types.
mapfile -t okprops < "$WORK/ok.ours.buffered"
with_real "$BIN/blkio-info" --output=json io_uring "path=$IMG" "${okprops[@]}" > "$WORK/info.real.json.raw"
with_ours "$BIN/blkio-info" --output=json io_uring "path=$IMG" "${okprops[@]}" > "$WORK/info.ours.json.raw"
# blkio-info's JSON output has no commas between members; add them, then
# let jq give each member's type.
jsontypes() {
    awk '/^    "/ { m[n++] = $0 } END { print "{"; for (i = 0; i < n; i++) print m[i] (i < n - 1 ? "," : ""); print "}" }' "$1" |
        jq -S 'map_values(type)'
}
jsontypes "$WORK/info.real.json.raw" > "$WORK/types.real" || die "real blkio-info --output=json is not parseable"
jsontypes "$WORK/info.ours.json.raw" > "$WORK/types.ours" || die "our blkio-info --output=json is not parseable"
diff -u "$WORK/types.real" "$WORK/types.ours" || die "property types (as blkio-info sees them) differ from real libblkio (- real, + ours)"
pass "property types agree for all $(jq length "$WORK/types.ours") properties (bool/int/uint64/str as seen by blkio-info --output=json)"

###########################################################################
step "(b) blkio-copy: byte-identical copies"
SIZE_MIB=8
SRC=$WORK/src.img
random_image "$SRC" "$SIZE_MIB"
log "source: $SIZE_MIB MiB of random data, sha256 $(sha "$SRC")"
fresh_dst() { rm -f "$1"; truncate -s "${SIZE_MIB}M" "$1"; }
copy_case() {
    local label=$1 runner=$2 prog=$3 dst=$4; shift 4
    fresh_dst "$dst"
    local t0=$EPOCHREALTIME
    "$runner" "$prog" "$@" || die "blkio-copy ($label) exited with status $?"
    local ms; ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }')
    assert_same_file "$SRC" "$dst" "blkio-copy $label [${ms} ms]"
}
DST=$WORK/dst.img
copy_case "ours: io_uring -> io_uring" with_ours "$BIN/blkio-copy" "$DST" \
    --input-blkio=io_uring "path=$SRC" --output-blkio=io_uring "path=$DST"
copy_case "ours: io_uring direct=true -> io_uring direct=true" with_ours "$BIN/blkio-copy" "$DST" \
    --input-blkio=io_uring "path=$SRC" direct=true --output-blkio=io_uring "path=$DST" direct=true
copy_case "ours: io_uring read-only=true -> io_uring" with_ours "$BIN/blkio-copy" "$DST" \
    --input-blkio=io_uring "path=$SRC" read-only=true --output-blkio=io_uring "path=$DST"
copy_case "ours: --input-file -> io_uring direct=true" with_ours "$BIN/blkio-copy" "$DST" \
    "--input-file=$SRC" --output-blkio=io_uring "path=$DST" direct=true
rm -f "$DST"; : > "$DST"
with_ours "$BIN/blkio-copy" --input-blkio=io_uring "path=$SRC" "--output-file=$DST" ||
    die "blkio-copy (ours: io_uring -> --output-file) failed"
assert_same_file "$SRC" "$DST" "blkio-copy ours: io_uring -> --output-file"
copy_case "real libblkio: io_uring -> io_uring" with_real "$BIN/blkio-copy" "$DST" \
    --input-blkio=io_uring "path=$SRC" --output-blkio=io_uring "path=$DST"
copy_case "real libblkio: io_uring direct=true -> io_uring direct=true" with_real "$BIN/blkio-copy" "$DST" \
    --input-blkio=io_uring "path=$SRC" direct=true --output-blkio=io_uring "path=$DST" direct=true
copy_case "ours, binary built against the REAL blkio.h: io_uring -> io_uring direct=true" with_ours "$BIN/realhdr/blkio-copy" "$DST" \
    --input-blkio=io_uring "path=$SRC" --output-blkio=io_uring "path=$DST" direct=true
# Writing into a read-only instance must fail (not silently succeed).
fresh_dst "$DST"
if with_ours "$BIN/blkio-copy" --input-blkio=io_uring "path=$SRC" --output-blkio=io_uring "path=$DST" read-only=true \
        > "$WORK/ro.out" 2>&1; then
    die "blkio-copy into a read-only=true output succeeded on our library"
fi
pass "blkio-copy into read-only=true output fails: $(head -1 "$WORK/ro.out")"

###########################################################################
step "(c) blkio-bench: short runs, sane JSON (tmpfs file and null driver)"
SHM=$(mktemp -d /dev/shm/blkstack-interop.XXXXXX 2>/dev/null) || SHM=""
if [[ -z $SHM || $(stat -f -c %T "$SHM") != tmpfs ]]; then
    [[ -n $SHM ]] && rmdir "$SHM"
    SHM=$WORK/tmpfs; mkdir -p "$SHM"
    mount -t tmpfs -o size=128m tmpfs "$SHM" || die "cannot mount a tmpfs"
    register_cleanup "umount '$SHM'"
else
    echo $$ > "$SHM/.owner"
    register_cleanup "rm -rf '$SHM'"
fi
BENCH_IMG=$SHM/bench.img
random_image "$BENCH_IMG" 64
log "tmpfs file: $BENCH_IMG ($(stat -f -c %T "$SHM"), 64 MiB)"
BENCH_SECS=${BENCH_SECS:-1}
check_bench_json() {
    local label=$1 file=$2 threads=$3
    jq -e --argjson threads "$threads" '
        (.aggregate | (.kiops > 0) and (.gips > 0) and (.calls > 0)
                    and (.min_lat_us > 0) and (.min_lat_us <= .mean_lat_us)
                    and (.mean_lat_us <= .max_lat_us)
                    and (.min_completions >= 0) and (.max_completions >= .mean_completions))
        and (.threads | length == $threads)
        and all(.threads[]; .kiops > 0 and .calls > 0)
    ' "$file" > /dev/null || { cat "$file"; die "blkio-bench $label: JSON missing, malformed or not sane"; }
}
bench_case() {
    local label=$1 runner=$2 threads=$3; shift 3
    local out=$WORK/bench.json rc=0
    "$runner" timeout 60 "$BIN/blkio-bench" --runtime="$BENCH_SECS" "$@" > "$out" 2> "$WORK/bench.err" || rc=$?
    [[ $rc -eq 0 ]] || { cat "$WORK/bench.err"; die "blkio-bench $label exited with status $rc"; }
    [[ ! -s $WORK/bench.err ]] || { cat "$WORK/bench.err"; die "blkio-bench $label wrote to stderr"; }
    check_bench_json "$label" "$out" "$threads"
    pass "$(printf '%-58s %s' "blkio-bench $label" "$(jq -r '.aggregate | "\(.kiops) kIOPS, lat \(.min_lat_us)/\(.mean_lat_us)/\(.max_lat_us) us, \(.calls) calls"' "$out")")"
}
for target in "io_uring path=$BENCH_IMG" "null size=$((1 << 30))"; do
    read -r -a tgt <<<"$target"
    for mode in "" --poll; do
        bench_case "${tgt[0]} randread  iodepth=1  ${mode:-event}" with_ours 1 --readwrite=randread --iodepth=1 $mode "${tgt[@]}"
        bench_case "${tgt[0]} randread  iodepth=32 ${mode:-event}" with_ours 1 --readwrite=randread --iodepth=32 $mode "${tgt[@]}"
        bench_case "${tgt[0]} randwrite iodepth=1  ${mode:-event}" with_ours 1 --readwrite=randwrite --iodepth=1 $mode "${tgt[@]}"
        bench_case "${tgt[0]} randwrite iodepth=32 ${mode:-event}" with_ours 1 --readwrite=randwrite --iodepth=32 $mode "${tgt[@]}"
    done
done
bench_case "null randread iodepth=8 bs=64k, 2 threads (2 queues)" with_ours 2 \
    --readwrite=randread --iodepth=8 --blocksize=65536 --num-threads=2 null size=$((1 << 30)) block-size=4096
bench_case "io_uring randwrite iodepth=8, 2 threads (2 queues)" with_ours 2 \
    --readwrite=randwrite --iodepth=8 --num-threads=2 io_uring "path=$BENCH_IMG"
bench_case "io_uring randread iodepth=256 (> num-entries 128)" with_ours 1 \
    --readwrite=randread --iodepth=256 io_uring "path=$BENCH_IMG"
# O_DIRECT on a disk file (the 8 MiB copy source).
bench_case "io_uring direct=true randread bs=1M iodepth=4 (disk file)" with_ours 1 \
    --readwrite=randread --blocksize=1048576 --iodepth=4 io_uring "path=$SRC" direct=true
bench_case "io_uring direct=true randwrite iodepth=16 --poll (disk file)" with_ours 1 \
    --readwrite=randwrite --iodepth=16 --poll io_uring "path=$SRC" direct=true
# Reference: the real library on the same file, same binary.
bench_case "REAL libblkio: io_uring randread iodepth=32 event" with_real 1 --readwrite=randread --iodepth=32 io_uring "path=$BENCH_IMG"
bench_case "REAL libblkio: io_uring randwrite iodepth=32 --poll" with_real 1 --readwrite=randwrite --iodepth=32 --poll io_uring "path=$BENCH_IMG"

###########################################################################
step "(d) blkio-copy into an empty output file (must grow it, as real libblkio does)"
# Real libblkio's io_uring driver reports can-grow=true for regular files:
# writes past the end extend the file. So copying into a new, empty file
# with --output-blkio works with real libblkio, and a drop-in replacement must
# do the same. Checked last so that the checks above run regardless.
# See tests/interop/FINDINGS.md (F1).
for lib in real ours; do
    rm -f "$DST"; : > "$DST"
    rc=0
    "with_$lib" "$BIN/blkio-copy" --input-blkio=io_uring "path=$SRC" --output-blkio=io_uring "path=$DST" \
        > "$WORK/grow.$lib.out" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        cat "$WORK/grow.$lib.out"
        if [[ $lib == ours ]]; then
            with_ours "$BIN/blkio-info" io_uring "path=$DST" can-grow > "$WORK/grow.cg" 2>&1 || true   # diagnostic only
            die "blkio-copy into an empty io_uring output fails on our library (status $rc; real libblkio succeeds; our can-grow=$(cat "$WORK/grow.cg")). See FINDINGS.md F1."
        fi
        die "premise broken: blkio-copy into an empty io_uring output fails on REAL libblkio too (status $rc)"
    fi
    assert_same_file "$SRC" "$DST" "blkio-copy ($lib libblkio) into an empty file grows it to the full image"
done
