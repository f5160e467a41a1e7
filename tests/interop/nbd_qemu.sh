#!/usr/bin/env bash
# The NBD export against QEMU's NBD client: qemu-img (info, map, convert,
# compare) and qemu-io (write/read with patterns, FUA, write-zeroes with and
# without unmap and fallback, discard, flush, aio, vectored I/O), from Debian
# 12's QEMU 7.2 and from trixie's QEMU 10 (in the chroot made by
# scripts/trixie-root.sh), over a Unix socket and TCP on 127.0.0.1.
#
# Usage: nbd_qemu.sh BUILD_DIR
source "$(dirname "$0")/nbd_lib.sh" "$1"
need_packages qemu-utils jq

TRIXIE=$("$SRC/scripts/trixie-root.sh" ensure)
make_tmpfs "$WORK/shm" 512M
SOCK=$WORK/nbd.sock
PORT=$(free_port)
SIZE=$((64 << 20))
MiB=$((1 << 20))
DISK=$WORK/shm/disk.img
truncate -s "$SIZE" "$DISK"
random_file "$WORK/src.img" 64
random_file "$WORK/src2.img" 64
dd if=/dev/zero of="$WORK/src2.img" bs=1M seek=10 count=20 conv=notrunc status=none

daemon_start d --threads 2 --blockdev "io_uring,id=disk0,path=$DISK" \
  --export "nbd,blockdev=disk0,name=disk,socket=$SOCK" \
  --export "nbd,blockdev=disk0,name=ro,id=ro,readonly=on,socket=$SOCK" \
  --export "nbd,blockdev=disk0,name=disk,id=disk-tcp,tcp=127.0.0.1:$PORT"

# How QEMU is run: on the host, or in the trixie chroot with $WORK bound at
# the same path (so sockets and images have one name everywhere).
host() { "$@"; }
trixie() { "$SRC/scripts/trixie-root.sh" run --bind "$WORK:$WORK" "$TRIXIE" -- "$@"; }

# file_region_is OFFSET LENGTH BYTE: the backing file holds only BYTE there.
file_region_is() {
  python3 - "$DISK" "$@" <<'EOF2' || fail "backing file at $1 (+$2) is not all byte $3"
import sys
path, off, n, byte = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 0)
with open(path, "rb") as f:
    f.seek(off)
    data = f.read(n)
sys.exit(0 if len(data) == n and data.count(byte) == n else 1)
EOF2
}

suite() {
  local Q=$1 ver=$2 uri=$3 ro_uri=$4 map
  step "QEMU $ver, $uri: qemu-img info"
  local info
  info=$($Q qemu-img info --output=json "$uri") || fail "qemu-img info $uri"
  jq -e ".\"virtual-size\" == $SIZE and .format == \"raw\"" <<<"$info" >/dev/null || fail "qemu-img info: $info"

  step "QEMU $ver: qemu-io write/read with patterns, FUA, zeroes, discard, flush"
  truncate -s 0 "$DISK"
  truncate -s "$SIZE" "$DISK"
  $Q qemu-io -f raw "$uri" \
    -c 'write -P 0xa5 0 1M' -c 'read -P 0xa5 0 1M' \
    -c 'write -f -P 0x5a 1M 1M' -c 'read -P 0x5a 1M 1M' \
    -c 'write -P 0xee 2M 3M' \
    -c 'write -z 2M 1M' -c 'read -P 0 2M 1M' \
    -c 'write -z -u 3M 1M' -c 'read -P 0 3M 1M' \
    -c 'write -z -u -f 5M 64k' \
    -c 'discard 4M 1M' -c 'read -P 0 4M 1M' \
    -c 'flush' \
    -c 'write -P 0x77 10485761 1000' -c 'read -P 0x77 10485761 1000' -c 'read -P 0 10485760 1' \
    -c 'writev -P 0x33 7M 4k 8k 4k' -c 'readv -P 0x33 7M 8k 8k' \
    -c 'read -P 0xa5 0 1M' >"$WORK/qio.out" 2>&1 ||
    { cat "$WORK/qio.out" >&2; fail "qemu-io ($ver) command failed"; }
  file_region_is 0 $MiB 0xa5
  file_region_is $MiB $MiB 0x5a
  file_region_is $((2 * MiB)) $((3 * MiB)) 0
  # What QEMU sees of the allocation: explicit zeroes stay allocated, unmapping
  # zeroes and discards leave holes.
  map=$($Q qemu-img map --output=json "$uri")
  jq -e --argjson m "$MiB" '.[] | select(.start <= 2*$m and .start + .length >= 3*$m) | .data == true' \
    <<<"$map" >/dev/null || fail "qemu-img map ($ver): 2M..3M should be allocated zeroes: $map"
  jq -e --argjson m "$MiB" '.[] | select(.start <= 3*$m and .start + .length >= 5*$m) | .data == false and .zero == true' \
    <<<"$map" >/dev/null || fail "qemu-img map ($ver): 3M..5M should be a hole: $map"

  step "QEMU $ver: fast zeroes (no fallback): refused on tmpfs unless unmapping is allowed"
  $Q qemu-io -f raw "$uri" -c 'write -P 0x99 8M 2M' >/dev/null
  if $Q qemu-io -f raw "$uri" -c 'write -z -n 8M 1M' >"$WORK/qio.out" 2>&1; then
    cat "$WORK/qio.out" >&2
    fail "qemu-io ($ver): write -z -n (fast zero, no unmap) succeeded on tmpfs"
  fi
  grep -q 'Operation not supported' "$WORK/qio.out" || { cat "$WORK/qio.out" >&2; fail "fast zero: wrong error"; }
  file_region_is $((8 * MiB)) $((2 * MiB)) 0x99
  $Q qemu-io -f raw "$uri" -c 'write -z -n -u 8M 1M' -c 'read -P 0 8M 1M' -c 'read -P 0x99 9M 1M' >/dev/null ||
    fail "qemu-io ($ver): write -z -n -u"

  step "QEMU $ver: qemu-io aio (many requests in flight)"
  local cmds=() i
  for i in $(seq 0 63); do cmds+=(-c "aio_write -P $((i + 1)) $((16 * MiB + i * 65536)) 64k"); done
  cmds+=(-c 'aio_flush')
  for i in $(seq 0 63); do cmds+=(-c "aio_read -P $((i + 1)) $((16 * MiB + i * 65536)) 64k"); done
  cmds+=(-c 'aio_flush')
  for i in 0 17 63; do cmds+=(-c "read -P $((i + 1)) $((16 * MiB + i * 65536)) 64k"); done
  $Q qemu-io -f raw "$uri" "${cmds[@]}" >"$WORK/qio.out" 2>&1 || { tail "$WORK/qio.out" >&2; fail "qemu-io aio ($ver)"; }
  # aio commands do not fail qemu-io on a mismatch: look for the complaint.
  if grep -qi 'fail\|error\|mismatch' "$WORK/qio.out"; then
    grep -i 'fail\|error\|mismatch' "$WORK/qio.out" | head >&2
    fail "qemu-io aio ($ver) reported failures"
  fi
  for i in 0 31 63; do file_region_is $((16 * MiB + i * 65536)) 65536 $((i + 1)); done

  step "QEMU $ver: qemu-img convert and compare"
  $Q qemu-img convert -n -f raw -O raw "$WORK/src.img" "$uri"
  same_content "$DISK" "$WORK/src.img"
  $Q qemu-img compare -f raw -F raw "$WORK/src.img" "$uri" >/dev/null || fail "qemu-img compare after convert ($ver)"
  $Q qemu-img convert -n -W -m 16 -f raw -O raw "$WORK/src2.img" "$uri"
  same_content "$DISK" "$WORK/src2.img"
  rm -f "$WORK/copy.qcow2"
  $Q qemu-img convert -f raw -O qcow2 "$uri" "$WORK/copy.qcow2"
  $Q qemu-img compare -f qcow2 -F raw "$WORK/copy.qcow2" "$WORK/src2.img" >/dev/null ||
    fail "qcow2 copy of the export differs from the source ($ver)"
  $Q qemu-img compare -f raw -F raw "$ro_uri" "$WORK/src2.img" >/dev/null || fail "compare over the read-only export ($ver)"
  # compare must notice a one-byte change made over NBD.
  $Q qemu-io -f raw "$uri" -c 'write -P 0x01 33554437 1' >/dev/null
  local rc=0
  $Q qemu-img compare -f raw -F raw "$WORK/src2.img" "$uri" >"$WORK/cmp.out" 2>&1 || rc=$?
  [[ $rc -eq 1 ]] || { cat "$WORK/cmp.out" >&2; fail "qemu-img compare ($ver) should report a difference (1), got $rc"; }
  grep -Eq 'Content mismatch at offset 3355443[2-7]!' "$WORK/cmp.out" || { cat "$WORK/cmp.out" >&2; fail "compare offset"; }

  step "QEMU $ver: the read-only export"
  $Q qemu-io -r -f raw "$ro_uri" -c 'read 0 1M' >/dev/null || fail "qemu-io -r read ($ver)"
  expect_fail $Q qemu-io -r -f raw "$ro_uri" -c 'write 0 1M'
  expect_fail $Q qemu-io -f raw "$ro_uri" -c 'write 0 1M'
  daemon_alive d
}

for q in host trixie; do
  ver=$($q qemu-img --version | head -1 | cut -d" " -f3)
  case $q:$ver in
    host:7.2.*) ;;
    trixie:10.*) ;;
    *) fail "unexpected QEMU for $q: $ver" ;;
  esac
  log "$q: $ver"
  suite $q "$ver" "nbd+unix:///disk?socket=$SOCK" "nbd+unix:///ro?socket=$SOCK"
  suite $q "$ver" "nbd://127.0.0.1:$PORT/disk" "nbd+unix:///ro?socket=$SOCK"
done

daemon_stop d
