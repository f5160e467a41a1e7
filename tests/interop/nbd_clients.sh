#!/usr/bin/env bash
# The NBD export against libnbd's tools (Debian 12: libnbd 1.14): nbdinfo's
# view of every export (flags, sizes, block sizes, contexts) against what the
# device behind it can do, export listing, allocation maps after writes,
# trims and zeroes, and nbdcopy round trips (both directions, multi-conn,
# many requests in flight) over a Unix socket, TCP on 127.0.0.1 and on [::1].
#
# Usage: nbd_clients.sh BUILD_DIR
source "$(dirname "$0")/nbd_lib.sh" "$1"
need_packages libnbd-bin python3-libnbd jq

SOCK=$WORK/nbd.sock
CTL=$WORK/ctl.sock
PORT4=$(free_port)
PORT6=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0)); print(s.getsockname()[1])')
make_tmpfs "$WORK/shm" 256M

SIZE=$((64 << 20))
truncate -s "$SIZE" "$WORK/disk.img"       # file system under /tmp
truncate -s "$SIZE" "$WORK/scratch.img"
truncate -s $((16 << 20)) "$WORK/shm/map.img"  # tmpfs: holes to the page
dd if=/dev/urandom of="$WORK/shm/map.img" bs=1M seek=2 count=1 conv=notrunc status=none
truncate -s $((16 << 20)) "$WORK/direct.img"

daemon_start d --threads 2 --control "$CTL" \
  --blockdev "io_uring,id=disk0,path=$WORK/disk.img" \
  --blockdev "io_uring,id=scratch0,path=$WORK/scratch.img" \
  --blockdev "io_uring,id=map0,path=$WORK/shm/map.img" \
  --blockdev "io_uring,id=direct0,path=$WORK/direct.img,direct=true" \
  --blockdev "null,id=null0,size=$((1 << 30)),latency-ns=2000000" \
  --export "nbd,blockdev=disk0,name=disk,description=the main disk,socket=$SOCK" \
  --export "nbd,blockdev=disk0,name=ro,id=disk-ro,readonly=on,description=read-only view,socket=$SOCK" \
  --export "nbd,blockdev=scratch0,name=scratch,socket=$SOCK" \
  --export "nbd,blockdev=map0,name=map,socket=$SOCK" \
  --export "nbd,blockdev=direct0,name=direct,socket=$SOCK" \
  --export "nbd,blockdev=null0,name=null,socket=$SOCK" \
  --export "nbd,blockdev=disk0,name=disk,id=disk-tcp4,tcp=127.0.0.1:$PORT4" \
  --export "nbd,blockdev=disk0,name=disk,id=disk-tcp6,tcp=[::1]:$PORT6"

unix_uri() { printf 'nbd+unix:///%s?socket=%s' "$1" "$SOCK"; }
TCP4=nbd://127.0.0.1:$PORT4/disk
TCP6=nbd://[::1]:$PORT6/disk

# ---------------------------------------------------------------- nbdinfo --json
# What each export must say, derived from the device: files are writable,
# punch holes (trim, fast zero) and report holes; the read-only view offers
# no write-type command; the null device has 512-byte blocks.

# Rotational: whatever sysfs says about the disk under the file's file system
# (none for tmpfs: not rotational).
rotational_of() {
  local dev q
  dev=$(stat -c '%Hd:%Ld' "$1")
  q=/sys/dev/block/$dev/queue
  [[ -e /sys/dev/block/$dev/partition ]] && q=/sys/dev/block/$dev/../queue
  if [[ -r $q/rotational && $(cat "$q/rotational") == 1 ]]; then echo true; else echo false; fi
}
# O_DIRECT offset alignment the kernel reports for a file (statx STATX_DIOALIGN),
# else the logical block size of its disk: what the daemon must advertise as
# the minimum block size of a direct=true export.
dio_align_of() {
  python3 - "$1" <<'EOF'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(256)
STATX_DIOALIGN = 0x2000
fd = os.open(sys.argv[1], os.O_RDONLY)
r = libc.statx(fd, b"", 0x1000, STATX_DIOALIGN, buf)  # AT_EMPTY_PATH
mask = int.from_bytes(buf.raw[0:4], "little")
align = int.from_bytes(buf.raw[156:160], "little")
if r != 0 or not mask & STATX_DIOALIGN or align == 0:
    st = os.fstat(fd)
    dev = "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    q = "/sys/dev/block/%s/queue" % dev
    if os.path.exists("/sys/dev/block/%s/partition" % dev):
        q = "/sys/dev/block/%s/../queue" % dev
    align = int(open(q + "/logical_block_size").read())
print(align)
EOF
}

# check_info URI JQ_ASSERTIONS...: every assertion must hold on the export
# object of `nbdinfo --json URI`.
check_info() {
  local uri=$1 json a
  shift
  json=$(nbdinfo --json "$uri") || fail "nbdinfo --json $uri failed"
  [[ $(jq '.exports | length' <<<"$json") == 1 ]] || fail "nbdinfo $uri: expected one export: $json"
  for a in "$@"; do
    jq -e ".exports[0] | $a" <<<"$json" >/dev/null || fail "nbdinfo $uri: '$a' does not hold in: $json"
  done
  jq -e '.protocol == "newstyle-fixed" and .structured == true and .TLS == false' <<<"$json" >/dev/null ||
    fail "nbdinfo $uri: protocol: $json"
}

step "nbdinfo --json: read-write file export"
ROT=$(rotational_of "$WORK/disk.img")
writable=('.is_read_only == false' '.can_trim == true' '.can_zero == true' '.can_fast_zero == true'
  '.can_flush == true' '.can_fua == true' '.can_multi_conn == true' '.can_cache == true' '.can_df == true'
  '.contexts == ["base:allocation"]')
for uri in "$(unix_uri disk)" "$TCP4" "$TCP6"; do
  check_info "$uri" "${writable[@]}" ".\"export-size\" == $SIZE" '."export-name" == "disk"' \
    ".is_rotational == $ROT" '.block_size_minimum == 1' '.block_size_preferred == 4096' \
    '.block_size_maximum == 33554432'
done
check_info "$(unix_uri disk)" '.description == "the main disk"'

step "nbdinfo --json: read-only view of the same device"
check_info "$(unix_uri ro)" '.is_read_only == true' '.can_trim == false' '.can_zero == false' \
  '.can_fast_zero == false' '.can_flush == true' '.can_fua == true' '.can_cache == true' '.can_df == true' \
  '.can_multi_conn == true' ".\"export-size\" == $SIZE" '.description == "read-only view"' \
  '.contexts == ["base:allocation"]'

step "nbdinfo --json: tmpfs, O_DIRECT and null exports"
check_info "$(unix_uri map)" "${writable[@]}" '.is_rotational == false' ".\"export-size\" == $((16 << 20))" \
  '.block_size_minimum == 1'
DIO=$(dio_align_of "$WORK/direct.img")
log "O_DIRECT alignment of $WORK/direct.img: $DIO"
check_info "$(unix_uri direct)" "${writable[@]}" ".block_size_minimum == $DIO" \
  ".block_size_preferred >= $DIO" '.block_size_preferred >= 512' '.block_size_maximum == 33554432'
check_info "$(unix_uri null)" '.is_read_only == false' '.can_trim == true' '.can_zero == true' \
  '.can_fast_zero == true' '.is_rotational == false' ".\"export-size\" == $((1 << 30))" \
  '.block_size_minimum == 512' '.block_size_preferred == 4096' '.block_size_maximum == 33554432'

# Single answers, as scripts use them.
[[ $(nbdinfo --size "$(unix_uri disk)") == "$SIZE" ]] || fail "nbdinfo --size"
nbdinfo --is read-only "$(unix_uri ro)" || fail "nbdinfo --is read-only: ro export must be read-only"
expect_fail nbdinfo --is read-only "$(unix_uri disk)"
nbdinfo --can trim "$(unix_uri disk)" || fail "nbdinfo --can trim"
expect_fail nbdinfo --can trim "$(unix_uri ro)"
nbdinfo --can multi-conn "$(unix_uri disk)" || fail "nbdinfo --can multi-conn"
nbdinfo --can fast-zero "$(unix_uri disk)" || fail "nbdinfo --can fast-zero"

step "nbdinfo: unknown export name is refused"
expect_fail nbdinfo "$(unix_uri no-such-export)"

# ---------------------------------------------------------------- nbdinfo --list
step "nbdinfo --list: six named exports on one socket, with descriptions"
list=$(nbdinfo --list --json "nbd+unix:///?socket=$SOCK")
jq -e '[.exports[]."export-name"] | sort == ["direct","disk","map","null","ro","scratch"]' <<<"$list" >/dev/null ||
  fail "export list: $list"
jq -e '.exports[] | select(."export-name" == "ro") | .description == "read-only view" and .is_read_only == true' \
  <<<"$list" >/dev/null || fail "export list: ro entry: $list"
jq -e '.exports[] | select(."export-name" == "null") | ."export-size" == 1073741824' <<<"$list" >/dev/null ||
  fail "export list: null entry: $list"
# A listener only lists its own exports.
list=$(nbdinfo --list --json "nbd://127.0.0.1:$PORT4")
jq -e '[.exports[]."export-name"] == ["disk"]' <<<"$list" >/dev/null || fail "TCP export list: $list"
nbdinfo --list "nbd+unix:///?socket=$SOCK" | grep -q 'description: the main disk' || fail "plain --list output"

# ---------------------------------------------------------------- nbdinfo --map
step "nbdinfo --map: a file with holes (tmpfs)"
M=$(unix_uri map)
MiB=$((1 << 20))
KiB=1024
got=$(nbd_map "$M")
want="[[0,$((2 * MiB)),3],[$((2 * MiB)),$MiB,0],[$((3 * MiB)),$((13 * MiB)),3]]"
[[ $got == "$want" ]] || fail "map of the prepared file: got $got, want $want"

step "nbdinfo --map after NBD writes, trims and write-zeroes"
cp --sparse=always "$WORK/shm/map.img" "$WORK/map.model"
random_file "$WORK/blob" 3
# The same operations on the local model (dd) and through NBD (nbdsh).
dd if="$WORK/blob" of="$WORK/map.model" bs=1M skip=0 seek=5 count=1 conv=notrunc status=none
dd if="$WORK/blob" of="$WORK/map.model" bs=1M skip=1 seek=8 count=1 conv=notrunc status=none
dd if=/dev/zero of="$WORK/map.model" bs=256K seek=33 count=2 conv=notrunc status=none  # trim 8.25M..8.75M
dd if=/dev/zero of="$WORK/map.model" bs=512K seek=4 count=1 conv=notrunc status=none   # zero 2M..2.5M
dd if=/dev/zero of="$WORK/map.model" bs=1M seek=12 count=1 conv=notrunc status=none    # zero 12M..13M
nbdsh -u "$M" -c - <<EOF
import nbd
blob = open("$WORK/blob", "rb").read()
h.pwrite(blob[0:$MiB], $((5 * MiB)))
h.pwrite(blob[$MiB:$((2 * MiB))], $((8 * MiB)), nbd.CMD_FLAG_FUA)
h.trim($((512 * KiB)), $((8 * MiB + 256 * KiB)))
h.zero($((512 * KiB)), $((2 * MiB)))                               # may punch a hole
h.zero($MiB, $((12 * MiB)), nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)  # must stay allocated
h.flush()
h.shutdown()
EOF
got=$(nbd_map "$M")
want="[[0,$((2 * MiB + 512 * KiB)),3],[$((2 * MiB + 512 * KiB)),$((512 * KiB)),0],[$((3 * MiB)),$((2 * MiB)),3]"
want+=",[$((5 * MiB)),$MiB,0],[$((6 * MiB)),$((2 * MiB)),3],[$((8 * MiB)),$((256 * KiB)),0]"
want+=",[$((8 * MiB + 256 * KiB)),$((512 * KiB)),3],[$((8 * MiB + 768 * KiB)),$((256 * KiB)),0]"
want+=",[$((9 * MiB)),$((3 * MiB)),3],[$((12 * MiB)),$MiB,0],[$((13 * MiB)),$((3 * MiB)),3]]"
[[ $got == "$want" ]] || fail "map after writes/trims/zeroes: got $got, want $want"
# The map must agree with the file itself, and the data with the model.
same_content "$WORK/shm/map.img" "$WORK/map.model"
nbdcopy "$M" "$WORK/map.read"
same_content "$WORK/map.read" "$WORK/map.model"
got=$(nbdinfo --map --totals --json "$M" | jq -c '[.[] | [.size, .type]] | sort')
want="[[$((3 * MiB)),0],[$((13 * MiB)),3]]"
[[ $got == "$want" ]] || fail "map totals: got $got, want $want"

step "nbdinfo --map: the null device is all data"
got=$(nbd_map "$(unix_uri null)")
[[ $got == "[[0,$((1 << 30)),0]]" ]] || fail "null map: $got"

# ---------------------------------------------------------------- nbdcopy
random_file "$WORK/src.img" 64
# A second image with holes and zero runs, to exercise zeroing on upload.
cp "$WORK/src.img" "$WORK/src2.img"
dd if=/dev/zero of="$WORK/src2.img" bs=1M seek=3 count=7 conv=notrunc status=none
fallocate --punch-hole --offset $((20 * MiB)) --length $((9 * MiB)) "$WORK/src2.img"
dd if=/dev/zero of="$WORK/src2.img" bs=4K seek=12345 count=3 conv=notrunc status=none
random_file "$WORK/src3.img" 64

step "nbdcopy file -> NBD (Unix socket), then NBD -> file"
nbdcopy "$WORK/src.img" "$(unix_uri disk)"
same_content "$WORK/disk.img" "$WORK/src.img"
nbdcopy "$(unix_uri disk)" "$WORK/out1.img"
same_content "$WORK/out1.img" "$WORK/src.img"
nbdcopy "$(unix_uri ro)" "$WORK/out1ro.img"
same_content "$WORK/out1ro.img" "$WORK/src.img"
expect_fail nbdcopy "$WORK/src2.img" "$(unix_uri ro)"
same_content "$WORK/disk.img" "$WORK/src.img"

step "nbdcopy over TCP 127.0.0.1: holes and zeroes, 4 connections, 64 requests each"
nbdcopy --connections=4 --threads=4 --requests=64 --flush "$WORK/src2.img" "$TCP4"
same_content "$WORK/disk.img" "$WORK/src2.img"
nbdcopy --connections=4 --threads=4 --requests=64 "$TCP4" "$WORK/out2.img"
same_content "$WORK/out2.img" "$WORK/src2.img"
[[ $(sum_of "$WORK/out2.img") == "$(sum_of "$WORK/src2.img")" ]] || fail "checksum after TCP round trip"

step "nbdcopy over TCP [::1], small requests, many in flight"
nbdcopy --connections=4 --threads=4 --requests=64 --request-size=65536 "$WORK/src3.img" "$TCP6"
same_content "$WORK/disk.img" "$WORK/src3.img"
nbdcopy --connections=2 --threads=2 --requests=64 --request-size=4096 "$TCP6" "$WORK/out3.img"
same_content "$WORK/out3.img" "$WORK/src3.img"

step "nbdcopy NBD -> NBD (TCP 127.0.0.1 -> Unix socket), multi-conn on both ends"
nbdcopy --connections=4 --threads=4 --requests=64 "$TCP4" "$(unix_uri scratch)"
same_content "$WORK/scratch.img" "$WORK/src3.img"
# Synchronous (one request at a time) back the other way.
nbdcopy --synchronous "$WORK/src.img" "$(unix_uri scratch)"
same_content "$WORK/scratch.img" "$WORK/src.img"

step "nbdcopy --connections=4 really opens four connections (stats while copying)"
nbdcopy --connections=4 --threads=4 --requests=16 --no-extents "$(unix_uri null)" null: &
copy_pid=$!
at_exit kill "$copy_pid"
peak=0
for _ in $(seq 400); do
  n=$(ctl_ok "$CTL" '{"cmd":"stats","id":"null"}' | jq '.exports[0].stats.connections')
  ((n > peak)) && peak=$n
  ((peak >= 4)) && break
  kill -0 "$copy_pid" 2>/dev/null || break
  sleep 0.05
done
wait "$copy_pid" || fail "nbdcopy from the null export failed"
((peak == 4)) || fail "nbdcopy --connections=4: saw at most $peak connections"

step "the daemon is still healthy"
daemon_alive d
check_info "$(unix_uri disk)" '.is_read_only == false'
daemon_stop d
