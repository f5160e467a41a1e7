# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Shared helpers for the interop tests; sourced, not run.
#
# Provides: log/step/pass/die, need_pkgs (apt-get installs what is missing),
# BLKSTACK_BUILD/BLKSTACK_LIB checks, a temp dir with cleanup traps, and
# checksums. Callers use `set -euo pipefail`.

INTEROP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$INTEROP_DIR/../.." && pwd)
TEST_NAME=${TEST_NAME:-$(basename "$0" .sh)}
T_START=$SECONDS

log()  { printf '[%s] %s\n' "$TEST_NAME" "$*"; }
step() { printf '\n[%s] === %s\n' "$TEST_NAME" "$*"; }
pass() { printf '[%s]   ok: %s\n' "$TEST_NAME" "$*"; }
die()  { printf '[%s] FAIL: %s\n' "$TEST_NAME" "$*" >&2; exit 1; }

# need_pkgs CMD:PACKAGE ... - install PACKAGE unless CMD is already there
# (CMD may be an absolute file path).
need_pkgs() {
    local want=() spec cmd pkg
    for spec in "$@"; do
        cmd=${spec%%:*}; pkg=${spec#*:}
        if [[ $cmd == /* ]]; then [[ -e $cmd ]] && continue
        else command -v "$cmd" >/dev/null 2>&1 && continue
        fi
        want+=("$pkg")
    done
    [[ ${#want[@]} -eq 0 ]] && return 0
    log "installing missing prerequisites: ${want[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null ||
            die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >/dev/null ||
            die "apt-get install ${want[*]} failed"
    fi
}

# setup_build BUILD_DIR - sets BLKSTACK_BUILD and BLKSTACK_LIBDIR (the
# directory holding our libblkio.so.1) and checks the library is ours.
setup_build() {
    [[ -n ${1:-} ]] || die "usage: $0 BUILD_DIR (the cmake build directory)"
    BLKSTACK_BUILD=$(realpath -e "$1") || die "build directory $1 does not exist"
    BLKSTACK_LIBDIR=$BLKSTACK_BUILD/src
    [[ -e $BLKSTACK_LIBDIR/libblkio.so.1 ]] ||
        die "$BLKSTACK_LIBDIR/libblkio.so.1 is missing: build first (ninja -C $BLKSTACK_BUILD)"
    BLKSTACK_LIB=$(realpath -e "$BLKSTACK_LIBDIR/libblkio.so.1")
    [[ $(id -u) -eq 0 ]] || die "the interop tests need root (chroot, mounts, apt-get)"
}

# Temp dir and cleanup: register_cleanup CMD runs CMD (eval'd) on exit, in
# reverse order of registration, whatever the exit path.
CLEANUPS=()
register_cleanup() { CLEANUPS+=("$1"); }
run_cleanups() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUPS[i]}" >/dev/null 2>&1 || true
    done
    if [[ $rc -eq 0 ]]; then
        printf '\n[%s] PASS (%d s)\n' "$TEST_NAME" "$((SECONDS - T_START))"
    else
        printf '\n[%s] FAILED with status %d (%d s)\n' "$TEST_NAME" "$rc" "$((SECONDS - T_START))" >&2
    fi
    exit "$rc"
}
trap run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

make_workdir() {
    # Work dirs of runs that were killed (SIGKILL skips the trap): remove
    # those whose owner process is gone.
    local d owner
    for d in /var/tmp/blkstack-interop.* /dev/shm/blkstack-interop.*; do
        [[ -f $d/.owner ]] || continue
        owner=$(cat "$d/.owner")
        kill -0 "$owner" 2>/dev/null && continue
        log "removing $d, left behind by dead run $owner"
        rm -rf --one-file-system "$d"
    done
    # On disk (not tmpfs), so that O_DIRECT works everywhere.
    WORK=$(mktemp -d /var/tmp/blkstack-interop.XXXXXX)
    echo $$ > "$WORK/.owner"
    register_cleanup "rm -rf --one-file-system '$WORK'"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# assert_same_file A B WHAT
assert_same_file() {
    local a b
    a=$(sha "$1"); b=$(sha "$2")
    [[ $a == "$b" ]] || die "$3: checksums differ: $1=$a $2=$b ($(cmp "$1" "$2" 2>&1 | head -1))"
    pass "$3 (sha256 ${a:0:16}...)"
}

# random_image FILE SIZE_MIB
random_image() {
    head -c "$(($2 * 1024 * 1024))" /dev/urandom > "$1"
}

# Prove that process PID has OUR libblkio.so.1 mapped (same device and inode
# as the built file) and no other libblkio.
assert_maps_our_lib() {
    local pid=$1 what=$2 maps want got
    maps=$(cat "/proc/$pid/maps") || die "$what: cannot read /proc/$pid/maps"
    # maps shows "MAJOR:MINOR INODE" (major/minor in hex) of the mapped file.
    want=$(stat -c '%Hd %Ld %i' "$BLKSTACK_LIB" | awk '{ printf "%02x:%02x %s", $1, $2, $3 }')
    got=$(awk '$6 ~ /libblkio\.so/ { print $4, $5, $6 }' <<<"$maps" | sort -u)
    [[ -n $got ]] || die "$what: no libblkio mapped in pid $pid"
    if awk -v want="$want" '($1 " " $2) != want { bad = 1 } END { exit !bad }' <<<"$got"; then
        die "$what: pid $pid maps a libblkio that is not ours (want dev:inode $want of $BLKSTACK_LIB): $got"
    fi
    pass "$what: pid $pid maps our library and no other: $(awk '{print $3}' <<<"$got" | sort -u | tr '\n' ' ')(dev:inode $want = $BLKSTACK_LIB)"
}
