#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# trixie-root.sh - a cached Debian trixie chroot holding real libblkio
# consumers (nbdkit 1.42, libnbd-bin, QEMU 10 with its blkio block driver,
# fio, libblkio1), for the interop tests.
#
# Usage:
#   scripts/trixie-root.sh [DIR]                 create DIR if missing or
#                                                incomplete, print its path
#   scripts/trixie-root.sh ensure [DIR]          same
#   scripts/trixie-root.sh run [--lib LIBDIR] [--bind SRC:DST]... DIR -- CMD...
#                                                run CMD inside the chroot
#   scripts/trixie-root.sh mount DIR             bind /proc /dev /sys (by hand)
#   scripts/trixie-root.sh umount DIR            undo that, and any stale mount
#   scripts/trixie-root.sh rebuild [DIR]         throw DIR away, build it anew
#
# DIR defaults to $BLKSTACK_TRIXIE_ROOT or /var/cache/blkstack/trixie-root.
# It is a cache: the stamp file DIR/.blkstack-complete is written last, and a
# DIR without it (an interrupted debootstrap) is thrown away and rebuilt.
#
# `run` mounts /proc, /dev, /sys and LIBDIR in a private mount namespace
# (unshare -m) that dies with the command, so an interrupted test can never
# leave a mount behind and tests running side by side cannot unmount each
# other's. LIBDIR (e.g. build/src, holding our libblkio.so.1) is bound,
# read-only, at /opt/blkstack/lib in the chroot, and the command runs with
# LD_LIBRARY_PATH=/opt/blkstack/lib. Further --bind SRC:DST pairs (DST inside
# the chroot) carry scratch directories in.
#
# Needs root. Installs debootstrap with apt-get when it is missing.
set -euo pipefail

TRIXIE_MIRROR=${TRIXIE_MIRROR:-http://deb.debian.org/debian}
TRIXIE_PACKAGES=nbdkit,libnbd-bin,qemu-utils,qemu-block-extra,libblkio1,fio
STAMP_NAME=.blkstack-complete
# What the stamp records: a root built for another package list is rebuilt.
STAMP_CONTENT="trixie minbase include=$TRIXIE_PACKAGES"

log() { printf 'trixie-root: %s\n' "$*" >&2; }
die() { printf 'trixie-root: ERROR: %s\n' "$*" >&2; exit 1; }

default_dir() { printf '%s\n' "${BLKSTACK_TRIXIE_ROOT:-/var/cache/blkstack/trixie-root}"; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot, mount)"; }

apt_install() {
    log "installing with apt-get: $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null
    fi
}

# Mount points under DIR, deepest first (from this namespace's mount table).
mounts_under() {
    local dir=$1
    # Field 5 of mountinfo is the mount point (octal escapes for odd chars;
    # our paths have none).
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

umount_all() {
    local dir m tries
    dir=$(realpath -m "$1")
    for tries in 1 2 3; do
        local any=0
        while read -r m; do
            [[ -n $m ]] || continue
            any=1
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done < <(mounts_under "$dir")
        [[ $any -eq 1 ]] || return 0
    done
    if [[ -n $(mounts_under "$dir") ]]; then
        die "could not unmount everything under $dir: $(mounts_under "$dir" | tr '\n' ' ')"
    fi
}

mount_all() {
    local dir
    dir=$(realpath -m "$1")
    [[ -f $dir/$STAMP_NAME ]] || die "$dir is not a complete trixie root (run: $0 ensure $dir)"
    mountpoint -q "$dir/proc" || mount -t proc proc "$dir/proc"
    mountpoint -q "$dir/sys" || mount --rbind /sys "$dir/sys"
    mountpoint -q "$dir/dev" || mount --rbind /dev "$dir/dev"
    mount --make-rslave "$dir/sys"
    mount --make-rslave "$dir/dev"
}

root_complete() {
    local dir=$1
    [[ -f $dir/$STAMP_NAME ]] && [[ $(cat "$dir/$STAMP_NAME") == "$STAMP_CONTENT" ]]
}

build_root() {
    local dir=$1 tmp
    command -v debootstrap >/dev/null || apt_install debootstrap
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || apt_install debian-archive-keyring
    tmp="$dir.new"
    umount_all "$tmp"
    rm -rf --one-file-system "$tmp"
    log "debootstrap trixie into $tmp (one-time, about 70 s and 400 MB)"
    local t0=$SECONDS
    if ! debootstrap --variant=minbase --include="$TRIXIE_PACKAGES" \
            trixie "$tmp" "$TRIXIE_MIRROR" > "$dir.debootstrap.log" 2>&1; then
        tail -n 30 "$dir.debootstrap.log" >&2
        umount_all "$tmp"
        die "debootstrap failed; full log in $dir.debootstrap.log"
    fi
    umount_all "$tmp"
    # Sanity: the consumers we came for are there.
    local f
    for f in usr/bin/nbdkit usr/bin/nbdcopy usr/bin/qemu-img usr/bin/qemu-io usr/bin/fio \
             usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-blkio-plugin.so \
             usr/lib/x86_64-linux-gnu/qemu/block-blkio.so; do
        [[ -e $tmp/$f ]] || die "debootstrap finished but $f is missing from the root"
    done
    mkdir -p "$tmp/opt/blkstack/lib" "$tmp/work"
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    printf '%s\n' "$STAMP_CONTENT" > "$tmp/$STAMP_NAME"
    sync -f "$tmp/$STAMP_NAME"
    # Move the finished root into place; an old incomplete one goes first.
    if [[ -e $dir ]]; then
        umount_all "$dir"
        rm -rf --one-file-system "$dir"
    fi
    mv "$tmp" "$dir"
    log "trixie root ready in $dir ($((SECONDS - t0)) s)"
}

ensure_root() {
    local dir
    dir=$(realpath -m "$1")
    need_root
    mkdir -p "$(dirname "$dir")"
    # One builder at a time (other worktrees share the cache); readers that
    # find the stamp do not wait for anything.
    if ! root_complete "$dir"; then
        exec {lockfd}>"$dir.lock"
        flock "$lockfd"
        if ! root_complete "$dir"; then
            if [[ -e $dir ]]; then
                log "$dir is incomplete or stale (no valid $STAMP_NAME): rebuilding"
            fi
            build_root "$dir"
        fi
        exec {lockfd}>&-
    fi
    printf '%s\n' "$dir"
}

# run [--lib LIBDIR] [--bind SRC:DST]... DIR -- CMD...
run_in_root() {
    local libdir="" binds=() dir
    while [[ $# -gt 0 ]]; do
        case $1 in
            --lib) libdir=$(realpath -e "$2"); shift 2 ;;
            --bind) binds+=("$2"); shift 2 ;;
            --) shift; break ;;
            -*) die "run: unknown option $1" ;;
            *) dir=$(realpath -e "$1"); shift ;;
        esac
    done
    [[ -n ${dir:-} ]] || die "run: no chroot directory given"
    [[ $# -gt 0 ]] || die "run: no command given"
    need_root
    root_complete "$dir" || die "$dir is not a complete trixie root (run: $0 ensure $dir)"
    local b src dst
    for b in "${binds[@]}"; do
        src=${b%%:*}; dst=${b#*:}
        [[ -d $src && $dst == /* ]] || die "run: bad --bind $b (want EXISTING_DIR:/abs/path/in/chroot)"
    done
    # The inner script runs in a new, private mount namespace: everything it
    # mounts disappears when it exits, however it exits.
    local inner='
        set -eu
        dir=$1; libdir=$2; shift 2
        mount --make-rprivate /
        mount -t proc proc "$dir/proc"
        mount --rbind /sys "$dir/sys"
        mount --rbind /dev "$dir/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$dir/tmp"
        if [ -n "$libdir" ]; then
            mount --bind "$libdir" "$dir/opt/blkstack/lib"
            mount -o remount,bind,ro "$dir/opt/blkstack/lib"
        fi
        while [ "$1" != "--" ]; do
            src=${1%%:*}; dst=${1#*:}; shift
            mkdir -p "$dir$dst"
            mount --bind "$src" "$dir$dst"
        done
        shift
        exec chroot "$dir" /usr/bin/env -i \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 TERM=dumb \
            ${libdir:+LD_LIBRARY_PATH=/opt/blkstack/lib} \
            "$@"
    '
    exec unshare --mount --propagation private -- \
        /bin/sh -c "$inner" sh "$dir" "$libdir" "${binds[@]}" -- "$@"
}

main() {
    local cmd=${1:-ensure}
    case $cmd in
        ensure) shift || true; ensure_root "${1:-$(default_dir)}" ;;
        rebuild)
            shift || true
            local dir
            dir=$(realpath -m "${1:-$(default_dir)}")
            need_root
            umount_all "$dir"
            rm -f "$dir/$STAMP_NAME"
            ensure_root "$dir" ;;
        run) shift; run_in_root "$@" ;;
        mount) shift; need_root; mount_all "${1:?mount: DIR}" ;;
        umount) shift; need_root; umount_all "${1:?umount: DIR}" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
        -*) die "unknown option $cmd (try --help)" ;;
        *) ensure_root "$cmd" ;;   # trixie-root.sh DIR
    esac
}

main "$@"
