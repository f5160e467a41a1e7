#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# libblkio-dev.sh [DIR] - fetch Debian trixie's libblkio-dev and libblkio1
# packages and unpack them into DIR (default $BLKSTACK_LIBBLKIO_DIR or
# /var/cache/blkstack/libblkio), then print DIR.
#
# The host's apt configuration is not touched: a private sources list, state
# and cache directory under DIR.apt/ are passed to apt-get with -o options.
#
# DIR then holds (among others):
#   usr/include/blkio.h                                  the real header
#   usr/lib/x86_64-linux-gnu/libblkio.so.1.5.0           the real library
#   usr/lib/x86_64-linux-gnu/libblkio.so.1               symlink to it
#   usr/share/doc/libblkio-dev/examples/blkio-{info,bench,copy}.c
#   usr/share/doc/libblkio-dev/blkio.rst.gz              the manual
#
# These are other people's files: they are fetched at test time into a cache
# outside the repository and must never be committed. DIR/.blkstack-complete
# is written last; a DIR without it is unpacked anew.
set -euo pipefail

log() { printf 'libblkio-dev: %s\n' "$*" >&2; }
die() { printf 'libblkio-dev: ERROR: %s\n' "$*" >&2; exit 1; }

DIR=$(realpath -m "${1:-${BLKSTACK_LIBBLKIO_DIR:-/var/cache/blkstack/libblkio}}")
SUITE=${LIBBLKIO_SUITE:-trixie}
MIRROR=${LIBBLKIO_MIRROR:-http://deb.debian.org/debian}
STAMP="$DIR/.blkstack-complete"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
EXAMPLES=usr/share/doc/libblkio-dev/examples
LIBDIR=usr/lib/x86_64-linux-gnu

complete() {
    [[ -f $STAMP ]] &&
    [[ -f $DIR/usr/include/blkio.h ]] &&
    [[ -f $DIR/$LIBDIR/libblkio.so.1.5.0 ]] &&
    [[ -e $DIR/$LIBDIR/libblkio.so.1 ]] &&
    [[ -f $DIR/$EXAMPLES/blkio-info.c ]] &&
    [[ -f $DIR/$EXAMPLES/blkio-bench.c ]] &&
    [[ -f $DIR/$EXAMPLES/blkio-copy.c ]] &&
    [[ -f $DIR/usr/share/doc/libblkio-dev/blkio.rst.gz ]]
}

if complete; then
    printf '%s\n' "$DIR"
    exit 0
fi

mkdir -p "$(dirname "$DIR")"
exec {lockfd}>"$DIR.lock"
flock "$lockfd"
if complete; then
    printf '%s\n' "$DIR"
    exit 0
fi

if [[ ! -f $KEYRING ]] || ! command -v apt-get >/dev/null; then
    log "installing debian-archive-keyring"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debian-archive-keyring >/dev/null
fi

APT="$DIR.apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$SUITE" > "$APT/sources.list"
apt_private() {
    apt-get -q \
        -o Dir::Etc::SourceList="$APT/sources.list" \
        -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$APT/lists" \
        -o Dir::Cache="$APT/cache" \
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
        -o APT::Get::List-Cleanup=false \
        -o APT::Architecture=amd64 -o APT::Architectures=amd64 \
        "$@"
}

log "apt-get update with a private sources list ($SUITE, $MIRROR)"
apt_private update > "$APT/update.log" 2>&1 || { cat "$APT/update.log" >&2; die "apt-get update failed"; }
log "apt-get download libblkio-dev libblkio1"
rm -f "$APT/debs/"*.deb
(cd "$APT/debs" && apt_private download libblkio-dev libblkio1) > "$APT/download.log" 2>&1 ||
    { cat "$APT/download.log" >&2; die "apt-get download failed"; }

rm -rf --one-file-system "$DIR"
mkdir -p "$DIR"
for deb in "$APT/debs/"*.deb; do
    log "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$DIR"
done
# libblkio-dev ships libblkio.so -> libblkio.so.1.5.0 (or .so.1); make sure
# the SONAME link a loader looks for is there.
[[ -f $DIR/$LIBDIR/libblkio.so.1.5.0 ]] || die "no $LIBDIR/libblkio.so.1.5.0 in the packages (version changed?)"
[[ -e $DIR/$LIBDIR/libblkio.so.1 ]] || ln -s libblkio.so.1.5.0 "$DIR/$LIBDIR/libblkio.so.1"
touch "$STAMP"
complete || die "unpacked, but expected files are missing under $DIR"
log "ready in $DIR"
printf '%s\n' "$DIR"
