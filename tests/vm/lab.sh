#!/usr/bin/env bash
# Sets up the VM lab and prints its directory. Everything is cached outside the
# repository and nothing is required to be there already: whatever is missing
# is (re)built, and each piece's stamp is written last, so an interrupted run
# leaves nothing that looks complete.
#
#   host packages      QEMU, busybox-static, kmod, and the tools tests use
#                      inside the VM (the VM runs the host's own binaries)
#   $LAB/apt/          a private apt configuration for Debian trixie (the
#                      host's apt sources, lists and preferences are untouched)
#   $LAB/kernel-VER/   trixie's kernel: boot/vmlinuz-VER and its module tree
#                      (lib/modules/VER, modules left xz-compressed, depmod'ed);
#                      complete when kernel-VER/.complete exists
#   $LAB/kernel.current  VER of the kernel the lab uses
#   $LAB/initrd-HASH.img a busybox initramfs (init.sh is its PID 1); HASH covers
#                      everything it is built from, so worktrees with different
#                      init.sh versions share one cache without fighting
#
# Usage: tests/vm/lab.sh [--refresh] [--env]
#   --refresh   resolve linux-image-amd64 again (picks up a newer trixie kernel)
#   --env       print LAB_DIR, KVER, KERNEL, INITRD, MODDIR as shell assignments
#               (run-in-vm.sh evals them) instead of the lab directory
# Environment: BLKSTACK_VM_LAB (default /var/cache/blkstack/vm),
#   BLKSTACK_VM_NO_INSTALL=1 to fail instead of running apt-get install,
#   BLKSTACK_VM_BZIMAGE=1 to boot vmlinuz rather than the extracted vmlinux.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB=${BLKSTACK_VM_LAB:-/var/cache/blkstack/vm}
REFRESH=0 PRINT=lab
while [ $# -gt 0 ]; do
  case "$1" in
    --refresh) REFRESH=1 ;;
    --env) PRINT=env ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "vm-lab: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "vm-lab: $*" >&2; }
die() { echo "vm-lab: error: $*" >&2; exit 1; }
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

mkdir -p "$LAB" || die "cannot create $LAB (set BLKSTACK_VM_LAB to a writable directory)"
exec 9>"$LAB/.lock"
flock -w 900 9 || die "timed out waiting for the lock on $LAB"

# ---- host packages ----------------------------------------------------------
# QEMU and the initramfs ingredients, plus what tests run inside the VM (the
# VM's root is the host's /, so the host's tools are the VM's tools).
HOST_PKGS=(
  qemu-system-x86 qemu-utils busybox-static kmod xz-utils zstd cpio gzip
  debian-archive-keyring util-linux iproute2 e2fsprogs nbd-client fio
)
missing_pkgs() { # one dpkg-query for all: this runs before every VM
  dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null |
    awk -v want="$*" '$2 == "installed" { ok[$1] = 1 }
      END { n = split(want, w, " "); for (i = 1; i <= n; i++) if (!ok[w[i]]) print w[i] }'
}
mapfile -t MISSING < <(missing_pkgs "${HOST_PKGS[@]}")
if [ ${#MISSING[@]} -gt 0 ]; then
  [ "${BLKSTACK_VM_NO_INSTALL:-0}" = 1 ] && die "missing host packages: ${MISSING[*]}"
  log "installing host packages: ${MISSING[*]}"
  export DEBIAN_FRONTEND=noninteractive
  INSTALL=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
  if ! "${INSTALL[@]}" "${MISSING[@]}" >&2; then
    log "apt-get install failed; updating the host's package lists and retrying"
    apt-get update -q -o DPkg::Lock::Timeout=300 >&2
    "${INSTALL[@]}" "${MISSING[@]}" >&2
  fi
  mapfile -t STILL < <(missing_pkgs "${MISSING[@]}")
  [ ${#STILL[@]} -eq 0 ] || die "could not install: ${STILL[*]}"
fi

# ---- the kernel: trixie's linux-image-amd64, through a private apt setup ---
APT=$LAB/apt
APT_OPTS=(
  -o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
  -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
  -o Acquire::Languages=none -o APT::Sandbox::User=root -o Debug::NoLocking=1
  -o Acquire::Retries=3
)

kernel_ok() { # VER: is kernel-VER complete and intact?
  [ -n "$1" ] && [ -f "$LAB/kernel-$1/.complete" ] &&
    [ -f "$LAB/kernel-$1/boot/vmlinuz-$1" ] &&
    [ -f "$LAB/kernel-$1/lib/modules/$1/modules.dep" ]
}

fetch_kernel() {
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$APT/sources.list"
  log "fetching trixie's package lists (private apt configuration in $APT)"
  apt-get "${APT_OPTS[@]}" -q update >&2 || die "apt-get update for trixie failed"
  # linux-image-amd64 is the meta package; it depends on the versioned image
  # of the day (linux-image-6.12.N+deb13-amd64).
  local pkg
  pkg=$(apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 |
        awk '$1 ~ /^\|?Depends:$/ && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }')
  [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 in trixie (apt-cache depends found no linux-image-N)"
  local ver=${pkg#linux-image-}
  if kernel_ok "$ver"; then
    log "$pkg is already cached"
  else
    log "downloading $pkg"
    local debs=$LAB/debs
    rm -rf "$debs" && mkdir -p "$debs"
    (cd "$debs" && apt-get "${APT_OPTS[@]}" -q download "$pkg" >&2) || die "apt-get download $pkg failed"
    local deb
    deb=$(ls "$debs"/*.deb)
    local tmp=$LAB/kernel-$ver.tmp
    rm -rf "$tmp" "$LAB/kernel-$ver"
    mkdir -p "$tmp"
    log "unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$tmp"
    # Merged-/usr packages ship usr/lib/modules; depmod -b wants lib/modules.
    if [ -d "$tmp/usr/lib/modules" ] && [ ! -d "$tmp/lib/modules" ]; then
      mkdir -p "$tmp/lib"
      mv "$tmp/usr/lib/modules" "$tmp/lib/modules"
    fi
    [ -f "$tmp/boot/vmlinuz-$ver" ] || die "$deb has no boot/vmlinuz-$ver"
    [ -d "$tmp/lib/modules/$ver" ] || die "$deb has no modules for $ver"
    rm -rf "$tmp/usr/share/doc" "$tmp/usr/share/bug" "$tmp/usr/lib/linux" 2>/dev/null || true
    log "depmod for $ver"
    depmod -b "$tmp" "$ver"
    touch "$tmp/.complete"
    mv "$tmp" "$LAB/kernel-$ver"
    rm -rf "$debs"
  fi
  echo "$ver" >"$LAB/kernel.current.new"
  mv "$LAB/kernel.current.new" "$LAB/kernel.current"
}

VER=""
[ -f "$LAB/kernel.current" ] && VER=$(cat "$LAB/kernel.current")
if [ "$REFRESH" = 1 ] || ! kernel_ok "$VER"; then
  fetch_kernel
  VER=$(cat "$LAB/kernel.current")
  kernel_ok "$VER" || die "kernel $VER is incomplete after fetching it"
fi
KDIR=$LAB/kernel-$VER
MODDIR=$KDIR/lib/modules/$VER

# The uncompressed ELF kernel, booted through its PVH entry point: QEMU
# starts it directly, without the bzImage's real-mode setup and in-guest
# decompression (slow under TCG). Only for zstd-compressed kernels with
# CONFIG_PVH; otherwise the lab boots vmlinuz.
extract_vmlinux() {
  local bz=$KDIR/boot/vmlinuz-$VER out=$KDIR/boot/vmlinux-$VER
  grep -qx 'CONFIG_PVH=y' "$KDIR/boot/config-$VER" 2>/dev/null || return 1
  grep -qx 'CONFIG_KERNEL_ZSTD=y' "$KDIR/boot/config-$VER" 2>/dev/null || return 1
  bytes() { dd if="$bz" iflag=skip_bytes,count_bytes skip="$1" count="$2" bs=1M status=none; }
  le() { bytes "$1" "$2" | od -An -t "u$2" | tr -d ' '; }
  # bzImage header: setup_sects, payload_offset, payload_length. A zstd
  # payload is the frame followed by the 4-byte little-endian output size.
  local setup_sects off len size
  setup_sects=$(le $((0x1f1)) 1) off=$(le $((0x248)) 4) len=$(le $((0x24c)) 4)
  off=$(((setup_sects + 1) * 512 + off))
  [ "$(bytes "$off" 4 | od -An -tx1 | tr -d ' ')" = 28b52ffd ] || return 1
  size=$(le $((off + len - 4)) 4)
  bytes "$off" $((len - 4)) | zstd -qdc >"$out.tmp" || return 1
  [ "$(stat -c %s "$out.tmp")" = "$size" ] || return 1
  [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || return 1
  mv "$out.tmp" "$out"
}
BOOT_KERNEL=$KDIR/boot/vmlinuz-$VER
if [ "${BLKSTACK_VM_BZIMAGE:-0}" != 1 ]; then
  if [ -f "$KDIR/boot/vmlinux-$VER" ] || extract_vmlinux; then
    BOOT_KERNEL=$KDIR/boot/vmlinux-$VER
  else
    rm -f "$KDIR/boot/vmlinux-$VER.tmp"
    log "booting the compressed kernel (no PVH entry could be extracted)"
  fi
fi

# ---- the initramfs -----------------------------------------------------------
# Only what it takes to reach the host's root: virtio-pci is built in, and
# 9p, its virtio transport and overlayfs are modules. Everything else (nvme,
# ublk_drv, nbd, vduse, ...) is loaded by modprobe from the full module tree
# once the host's root is mounted.
INITRD_MODULES="9p 9pnet_virtio overlay"
BUSYBOX=$(command -v busybox)
[ -n "$BUSYBOX" ] || die "busybox not found"
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamically linked (install busybox-static)"; fi
INITRD_HASH=$({
  cat "$HERE/init.sh" "$HERE/lab.sh"
  echo "$VER $INITRD_MODULES"
  stat -L -c '%s %Y' "$BUSYBOX"
} | sha256sum | cut -c1-16)
INITRD=$LAB/initrd-$INITRD_HASH.img

if [ ! -f "$INITRD" ]; then
  log "building the initramfs for $VER"
  ROOT=$(mktemp -d "${TMPDIR:-/tmp}/blkstack-initrd.XXXXXX")
  trap 'rm -rf "$ROOT"' EXIT
  mkdir -p "$ROOT"/{bin,dev,proc,sys,lower,upper,newroot,ctl,modules}
  cp "$BUSYBOX" "$ROOT/bin/busybox"
  for app in sh mount umount mkdir insmod sleep cat echo poweroff chroot ls \
             dmesg chmod printf sed ip stty hostname sync mknod ln; do
    ln -s busybox "$ROOT/bin/$app"
  done
  # Dependencies first: a depth-first walk over modinfo's depends lists.
  ORDER=()
  resolve() {
    local m=$1 seen dep deps
    for seen in "${ORDER[@]:-}"; do [ "$seen" = "$m" ] && return 0; done
    deps=$(modinfo -b "$KDIR" -k "$VER" -F depends "$m") || die "module $m not found in $VER"
    for dep in ${deps//,/ }; do resolve "$dep"; done
    ORDER+=("$m")
  }
  for m in $INITRD_MODULES; do resolve "$m"; done
  : >"$ROOT/modules/order"
  for m in "${ORDER[@]}"; do
    f=$(modinfo -b "$KDIR" -k "$VER" -F filename "$m")
    case "$f" in
      "(builtin)"|"") continue ;;
      *.ko.xz) xz -dc "$f" >"$ROOT/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$ROOT/modules/$m.ko" ;;
      *.ko.gz) gzip -dc "$f" >"$ROOT/modules/$m.ko" ;;
      *.ko) cp "$f" "$ROOT/modules/$m.ko" ;;
      *) die "unexpected module file $f" ;;
    esac
    echo "$m.ko" >>"$ROOT/modules/order"
  done
  install -m 0755 "$HERE/init.sh" "$ROOT/init"
  (cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  log "initramfs $(basename "$INITRD") ($(du -k "$INITRD" | cut -f1) KiB, modules: $(tr '\n' ' ' <"$ROOT/modules/order"))"
fi

if [ "$PRINT" = env ]; then
  printf 'LAB_DIR=%q\nKVER=%q\nKERNEL=%q\nINITRD=%q\nMODDIR=%q\n' \
    "$LAB" "$VER" "$BOOT_KERNEL" "$INITRD" "$MODDIR"
else
  echo "$LAB"
fi
if [ "$(elapsed | cut -d. -f1)" -ge 2 ]; then log "ready in $(elapsed) s"; fi
