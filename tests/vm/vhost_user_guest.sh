#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# vhost_user_guest.sh BUILD_DIR [qsd|blkstack]
#
# A Linux guest's virtio-blk driver on a vhost-user-blk export that runs on
# the HOST: the server (qemu-storage-daemon, default, or `blkstack serve
# --export vhost-user-blk`) is started first on a 256 MiB image; then the VM
# lab (run-in-vm.sh) boots with its RAM in a shared memfd
#   -object memory-backend-memfd,id=mem,size=<mem>M,share=on
#   -machine q35,memory-backend=mem
#   -chardev socket,id=vhu,path=SOCK -device vhost-user-blk-pci,chardev=vhu,num-queues=2
# and runs vhost_user_guest_in_vm.sh: finds the disk by size, checks 2 queues,
# writes a random pattern with O_DIRECT and reads it back, write-zeroes and
# discard (blkdiscard), mkfs.ext4 + mount + files + remount + verify + fstrim
# + fsck. Back on the host, with the server stopped
# (SIGTERM: it must exit), the backing file must hold the pattern byte for
# byte, zeros where the guest zeroed, a clean ext4, and the guest's files
# (read back with debugfs).
#
# Exit 77 (ctest: skipped) when SERVER is blkstack and our export is not in
# the build yet (BLKSTACK_VHOST_REQUIRE=1: fail instead).
set -euo pipefail
TEST_NAME=vhost_user_guest
source "$(dirname "$0")/../interop/vhost_lib.sh"
SERVER=${2:-qsd}
case $SERVER in qsd|blkstack) ;; *) die "usage: $0 BUILD_DIR [qsd|blkstack]" ;; esac
TEST_NAME=vhost_user_guest_$SERVER
vhost_setup_servers "${1:-}"
if [[ $SERVER == blkstack ]] && ! vhost_require_or_skip ours-export; then
    log "SKIP: $(vhost_why_unavailable ours-export)"
    exit 77
fi
need_pkgs debugfs:e2fsprogs e2fsck:e2fsprogs

VM_DIR=$(cd "$(dirname "$0")" && pwd)
SIZE_MIB=256 FS_MIB=128 PAT_OFF=200 PAT_MIB=16 ZERO_OFF=220 QUEUES=2 MEM=${VHU_VM_MEM:-1024}
IMG=$WORK/disk.img SOCK=$WORK/vhu.sock PAT=$WORK/pattern OUT=$WORK/out
truncate -s ${SIZE_MIB}M "$IMG"
random_image "$PAT" $PAT_MIB
mkdir -p "$OUT"

step "server: $SERVER on the host"
start_vhost_server "$SERVER" "$IMG" "$SOCK" "$QUEUES"

step "guest: vhost-user-blk-pci on $SOCK (RAM: ${MEM} MiB shared memfd)"
rc=0
timeout -k 10 ${VHU_VM_TIMEOUT:-170} "$VM_DIR/run-in-vm.sh" --timeout ${VHU_VM_TIMEOUT:-160} \
    --mem "$MEM" --machine q35,memory-backend=mem \
    --qemu -object --qemu "memory-backend-memfd,id=mem,size=${MEM}M,share=on" \
    --qemu -chardev --qemu "socket,id=vhu,path=$SOCK" \
    --device "vhost-user-blk-pci,chardev=vhu,num-queues=$QUEUES" \
    --out "$OUT" \
    --env VHU_SIZE=$((SIZE_MIB << 20)) --env VHU_QUEUES=$QUEUES --env VHU_PATTERN="$PAT" \
    --env VHU_PAT_OFF=$PAT_OFF --env VHU_FS_MIB=$FS_MIB --env VHU_ZERO_OFF=$ZERO_OFF \
    "$VM_DIR/vhost_user_guest_in_vm.sh" || rc=$?
if [[ $rc -ne 0 ]]; then
    echo "---- $SERVER log ----" >&2; vhost_server_log_tail "$SOCK" >&2
    die "the guest side failed (run-in-vm.sh status $rc)"
fi
pass "guest side: disk $(cat "$OUT/disk"), pattern and ext4 verified in the guest"
vhost_server_alive "$SOCK" || die "$SERVER died while the guest used it"

step "host: the backing file"
stop_vhost_server "$SOCK"
# The guest wrote the pattern at PAT_OFF MiB, then the pattern's first three
# 4 KiB blocks again 7 blocks further.
cp "$PAT" "$WORK/expect"
dd if="$PAT" of="$WORK/expect" bs=4k count=3 seek=7 conv=notrunc status=none
dd if="$IMG" of="$WORK/got" bs=1M skip=$PAT_OFF count=$PAT_MIB status=none
assert_same_file "$WORK/expect" "$WORK/got" "the guest's O_DIRECT pattern is in the backing file at $PAT_OFF MiB"
dd if="$IMG" of="$WORK/got" bs=1M skip=$ZERO_OFF count=4 status=none
head -c $((4 << 20)) /dev/zero >"$WORK/zeros"
assert_same_file "$WORK/zeros" "$WORK/got" "the range the guest zeroed (blkdiscard -z) is zeros in the backing file at $ZERO_OFF MiB"
e2fsck -f -n "$IMG" >"$WORK/fsck.log" 2>&1 || { cat "$WORK/fsck.log"; die "the backing file holds no clean ext4"; }
pass "e2fsck -f -n on the backing file: clean"
mkdir -p "$WORK/files"
while read -r sum f; do
    debugfs -R "dump /$f $WORK/files/$f" "$IMG" >/dev/null 2>&1 || die "debugfs cannot dump /$f"
    [[ $(sha "$WORK/files/$f") == "$sum" ]] || die "/$f in the backing file differs from what the guest wrote"
done <"$OUT/fs.sha256"
pass "the guest's $(wc -l <"$OUT/fs.sha256") files, dumped from the backing file with debugfs, match the guest's checksums"
[[ $(debugfs -R "ls /dir" "$IMG" 2>/dev/null | grep -o 'small[0-9]*' | wc -l) == 50 ]] ||
    die "the backing file's /dir does not hold the guest's 50 small files"
pass "the backing file's /dir holds the guest's 50 small files"
