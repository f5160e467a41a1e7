#!/usr/bin/env bash
# The nbd driver (a remote NBD export as a library device) against real
# servers: nbdkit, qemu-nbd and our own `blkstack serve`, in plaintext and
# over TLS (pre-shared keys, as nbdkit and libnbd use them). Data goes both
# ways through `blkstack copy` and is checked against what the server holds;
# a re-export (`--blockdev nbd,...` behind `--export nbd`) is read by nbdcopy.
#
# Usage: nbd_driver.sh BUILD_DIR
source "$(dirname "$0")/nbd_lib.sh" "$1"
need_packages nbdkit qemu-utils libnbd-bin gnutls-bin

SIZE=$((32 << 20))
head -c "$SIZE" /dev/urandom >"$WORK/src.img"
SRC_SUM=$(sha256sum <"$WORK/src.img")
same_as_src() { [[ $(sha256sum <"$1") == "$SRC_SUM" ]] || fail "$1 differs from the source"; }
copy() { "$BLKSTACK" copy --no-progress --depth 16 "$@"; }
# blkstack copy writes into an existing device: make the file first.
copy_out() { truncate -s "$SIZE" "$2" && copy "$1" "io_uring,path=$2"; }

# nbdkit in the background on a Unix socket; waits until it listens.
nbdkit_start() {
  local sock=$1
  shift
  nbdkit -f -U "$sock" -P "$sock.pid" "$@" >>"$WORK/nbdkit.log" 2>&1 &
  at_exit kill "$!"
  for _ in $(seq 100); do [[ -s $sock.pid ]] && return; sleep 0.1; done
  fail "nbdkit $* did not start"
}

step "nbdkit memory: write through the driver, read back with nbdcopy"
K=$WORK/nbdkit.sock
nbdkit_start "$K" memory "$SIZE"
copy "io_uring,path=$WORK/src.img" "nbd,uri=nbd+unix:///?socket=$K"
nbdcopy "nbd+unix:///?socket=$K" "$WORK/k-out.img"
same_as_src "$WORK/k-out.img"
step "nbdkit: read through the driver, several connections (multi-conn)"
copy_out "nbd,uri=nbd+unix:///?socket=$K,connections=4" "$WORK/k-back.img"
same_as_src "$WORK/k-back.img"
info=$("$BLKSTACK" info "nbd,uri=nbd+unix:///?socket=$K")
grep -Eq '^ *can-multi-conn *[:=]? *true' <<<"$info" || fail "blkstack info: can-multi-conn: $info"
grep -Eq '^ *supports-fua-natively *[:=]? *true' <<<"$info" || fail "blkstack info: supports-fua-natively: $info"

step "qemu-nbd: both directions"
Q=$WORK/qemu.sock
truncate -s "$SIZE" "$WORK/q.img"
qemu-nbd -k "$Q" -f raw --persistent --shared=4 --cache=writeback "$WORK/q.img" >>"$WORK/qemu-nbd.log" 2>&1 &
at_exit kill "$!"
for _ in $(seq 100); do [[ -S $Q ]] && break; sleep 0.1; done
copy "io_uring,path=$WORK/src.img" "nbd,uri=nbd+unix:///?socket=$Q"
copy_out "nbd,uri=nbd+unix:///?socket=$Q" "$WORK/q-back.img"
same_as_src "$WORK/q-back.img"
qemu-img compare -f raw -F raw "$WORK/src.img" "$WORK/q.img" >/dev/null || fail "qemu-nbd's image differs"

step "blkstack serve: both directions, named export over TCP"
truncate -s "$SIZE" "$WORK/ours.img"
PORT=$(free_port)
daemon_start ours --blockdev "io_uring,id=d0,path=$WORK/ours.img" \
  --export "nbd,blockdev=d0,name=disk,tcp=127.0.0.1:$PORT"
copy "io_uring,path=$WORK/src.img" "nbd,uri=nbd://127.0.0.1:$PORT,export=disk"
cmp "$WORK/src.img" "$WORK/ours.img" || fail "our export's image differs"
copy_out "nbd,uri=nbd://127.0.0.1:$PORT/disk" "$WORK/ours-back.img"
same_as_src "$WORK/ours-back.img"
expect_fail "$BLKSTACK" info "nbd,uri=nbd://127.0.0.1:$PORT/nosuchexport"

step "TLS (PSK): nbdkit --tls=require"
psktool -u alice -p "$WORK/keys.psk" >/dev/null
KT=$WORK/tls.sock
nbdkit_start "$KT" --tls=require --tls-psk="$WORK/keys.psk" memory "$SIZE"
TLS_URI="nbds+unix://alice@/?socket=$KT&tls-psk-file=$WORK/keys.psk"
copy "io_uring,path=$WORK/src.img" "nbd,uri=$TLS_URI"
copy_out "nbd,uri=$TLS_URI" "$WORK/tls-back.img"
same_as_src "$WORK/tls-back.img"
step "TLS: a plaintext client is refused, quickly and with a message"
out=$(timeout 20 "$BLKSTACK" info "nbd,uri=nbd+unix:///?socket=$KT,connect-timeout=5" 2>&1) &&
  fail "plaintext connect to a TLS-only server succeeded"
[[ -n $out ]] || fail "no error message for a refused plaintext connect"

step "re-export: --blockdev nbd behind --export nbd, read by nbdcopy"
R=$WORK/reexport.sock
daemon_start re --blockdev "nbd,id=remote,uri=nbd+unix:///?socket=$K" \
  --export "nbd,blockdev=remote,socket=$R"
nbdcopy "nbd+unix:///?socket=$R" "$WORK/re-out.img"
same_as_src "$WORK/re-out.img"
nbdinfo --json "nbd+unix:///?socket=$R" >"$WORK/re.json"
jq -e '.exports[0] | .can_fua and .can_flush and .can_trim and .can_zero and (."export-size" == '"$SIZE"')' \
  "$WORK/re.json" >/dev/null || fail "re-export flags: $(cat "$WORK/re.json")"
daemon_stop re

step "re-export of a sparse export: holes pass through (base:allocation)"
SP=$WORK/sparse.sock
RS=$WORK/reexport-sparse.sock
SPARSE_SIZE=$((64 << 20))
nbdkit_start "$SP" memory "$SPARSE_SIZE"
qemu-io -f raw -c 'write -P 0x55 1M 64k' -c 'write -P 0xaa 17M 1M' -c 'write -P 0x0f 40M 4M' \
  "nbd+unix:///?socket=$SP" >/dev/null || fail "qemu-io could not write the sparse source"
daemon_start rs --blockdev "nbd,id=sparse,uri=nbd+unix:///?socket=$SP" \
  --export "nbd,blockdev=sparse,socket=$RS"
nbdinfo --map "nbd+unix:///?socket=$SP" >"$WORK/map-origin.txt"
nbdinfo --map "nbd+unix:///?socket=$RS" >"$WORK/map-re.txt"
grep -q 'hole,zero' "$WORK/map-re.txt" || fail "the re-export reports no holes: $(cat "$WORK/map-re.txt")"
diff -u "$WORK/map-origin.txt" "$WORK/map-re.txt" || fail "the re-export's map differs from the server's"
nbdinfo --map --totals "nbd+unix:///?socket=$RS" >"$WORK/totals-re.txt"
# 64 KiB + 1 MiB + 4 MiB of data (the memory plugin's 32 KiB pages hold it exactly).
grep -Eq '^ *5308416 .* 0 +data' "$WORK/totals-re.txt" || fail "re-export data total: $(cat "$WORK/totals-re.txt")"
# qemu-img map sees the same zero ranges through the re-export.
qemu-img map -f raw --output=json "nbd+unix:///?socket=$RS" >"$WORK/qmap-re.json"
qemu-img map -f raw --output=json "nbd+unix:///?socket=$SP" >"$WORK/qmap-origin.json"
diff -u <(jq -c '.[] | [.start, .length, .data, .zero]' "$WORK/qmap-origin.json") \
  <(jq -c '.[] | [.start, .length, .data, .zero]' "$WORK/qmap-re.json") || fail "qemu-img map differs"
jq -e '[.[] | select(.zero and (.data | not))] | length >= 3' "$WORK/qmap-re.json" >/dev/null ||
  fail "qemu-img map: no zero ranges through the re-export: $(cat "$WORK/qmap-re.json")"
# Copies through the re-export are right, and sparse: nbdcopy and qemu-img
# convert skip what reads as zeroes.
nbdcopy "nbd+unix:///?socket=$SP" "$WORK/sparse-origin.img"
nbdcopy "nbd+unix:///?socket=$RS" "$WORK/sparse-nbdcopy.img"
cmp "$WORK/sparse-origin.img" "$WORK/sparse-nbdcopy.img" || fail "nbdcopy through the re-export differs"
qemu-img convert -f raw -O raw "nbd+unix:///?socket=$RS" "$WORK/sparse-convert.img"
[[ $(sha256sum <"$WORK/sparse-convert.img") == $(sha256sum <"$WORK/sparse-origin.img") ]] ||
  fail "qemu-img convert through the re-export differs"
# blkstack copy from the server (the synchronous Device::extent_at, on a
# connection of its own: nbdkit offers multi-conn) skips the holes too.
truncate -s "$SPARSE_SIZE" "$WORK/sparse-copy.img"
copy "nbd,uri=nbd+unix:///?socket=$SP" "io_uring,path=$WORK/sparse-copy.img"
cmp "$WORK/sparse-origin.img" "$WORK/sparse-copy.img" || fail "blkstack copy of the sparse export differs"
for f in sparse-nbdcopy sparse-convert sparse-copy; do
  used=$(($(stat -c '%b * %B' "$WORK/$f.img")))
  ((used <= 16 << 20)) || fail "$f.img is not sparse: $used bytes allocated of $SPARSE_SIZE"
done
# Hole-aware structured reads: a large read over data and holes (qemu-io
# verifies the pattern, and the zeroes, through the re-export).
qemu-io -f raw -c 'read -P 0xaa 17M 1M' -c 'read -P 0 18M 4M' -c 'read -P 0x55 1M 64k' -c 'read -P 0 0 1M' \
  "nbd+unix:///?socket=$RS" >/dev/null || fail "qemu-io read back through the re-export"
# Written through the re-export, the holes close, and the map follows.
qemu-io -f raw -c 'write -P 0x33 8M 1M' "nbd+unix:///?socket=$RS" >/dev/null || fail "write through the re-export"
nbdinfo --map "nbd+unix:///?socket=$RS" | grep -Eq '^ *8388608 +1048576 +0 +data' ||
  fail "the new data is not in the re-export's map: $(nbdinfo --map "nbd+unix:///?socket=$RS")"
daemon_stop rs

step "a slow block status does not stall the reactor (one thread: everything on it)"
SL=$WORK/slow.sock
RL=$WORK/reexport-slow.sock
nbdkit_start "$SL" --filter=delay memory "$SPARSE_SIZE" delay-extents=3
daemon_start slow --threads 1 --blockdev "nbd,id=slow,uri=nbd+unix:///?socket=$SL" \
  --export "nbd,blockdev=slow,socket=$RL"
nbdinfo --map "nbd+unix:///?socket=$RL" >"$WORK/map-slow.txt" &
MAP=$!
sleep 0.5
t0=$(date +%s%N)
qemu-io -f raw -c 'write -P 0x44 0 4k' -c 'read -P 0x44 0 4k' "nbd+unix:///?socket=$RL" >/dev/null ||
  fail "I/O through the re-export while a block status waits"
ms=$((($(date +%s%N) - t0) / 1000000))
((ms < 2000)) || fail "I/O took $ms ms behind a 3 s block status: the reactor waited for it"
kill -0 "$MAP" 2>/dev/null || fail "the block status was not slow: the check above proves nothing"
wait "$MAP" || fail "nbdinfo --map of the slow re-export"
grep -q 'hole,zero' "$WORK/map-slow.txt" || fail "slow re-export map: $(cat "$WORK/map-slow.txt")"
daemon_stop slow

step "server killed mid-I/O behind a re-export: errors, no hang, the daemon stays up"
P=$WORK/persist.sock
R2=$WORK/reexport2.sock
truncate -s "$SIZE" "$WORK/persist.img"
qemu_nbd_start() {
  qemu-nbd -k "$P" -f raw --persistent --shared=4 "$WORK/persist.img" >>"$WORK/qemu-nbd.log" 2>&1 &
  QPID=$!
  at_exit kill "$QPID"
  for _ in $(seq 100); do [[ -S $P ]] && return; sleep 0.1; done
  fail "qemu-nbd did not start"
}
qemu_nbd_start
# Written through the driver and flushed: acknowledged.
copy "io_uring,path=$WORK/src.img" "nbd,uri=nbd+unix:///?socket=$P"
daemon_start re2 --blockdev "nbd,id=r2,uri=nbd+unix:///?socket=$P" --export "nbd,blockdev=r2,socket=$R2"
# One 4 KiB request at a time through two hops: long enough to be cut off.
nbdcopy --connections=1 --requests=1 --request-size=4096 "nbd+unix:///?socket=$R2" "$WORK/cut.img" \
  2>"$WORK/cut.err" &
COPY=$!
sleep 0.3
kill -9 "$QPID"
rm -f "$P"
for _ in $(seq 200); do kill -0 "$COPY" 2>/dev/null || break; sleep 0.1; done
kill -0 "$COPY" 2>/dev/null && fail "nbdcopy still running 20 s after the server died"
wait "$COPY" && fail "nbdcopy succeeded although the server died under it"
daemon_alive re2
# New requests fail at once too.
expect_fail timeout 10 nbdcopy "nbd+unix:///?socket=$R2" "$WORK/cut2.img"
daemon_alive re2
daemon_stop re2
step "the server back: everything it acknowledged is there"
qemu_nbd_start
copy_out "nbd,uri=nbd+unix:///?socket=$P" "$WORK/after.img"
same_as_src "$WORK/after.img"
daemon_stop ours
