#!/usr/bin/env bash
# The VM lab's ingredients, built once and cached outside the repository
# (never required: anything missing is rebuilt):
#   $LAB/kernel/boot/vmlinuz-*       Debian trixie's kernel
#   $LAB/kernel/lib/modules/VER/     its modules, decompressed, depmod'ed
#   $LAB/initrd.img                  a busybox initramfs that boots into the
#                                    host's / (read-only 9p + tmpfs overlay)
# Prints the lab directory. Usage: tests/vm/lab.sh [LABDIR]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LAB=${1:-${BLKSTACK_VM_LAB:-/var/cache/blkstack/vm}}
mkdir -p "$LAB"
exec 9>"$LAB/.lock"
flock 9

log() { echo "vm-lab: $*" >&2; }

need() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
}
need qemu-system-x86 busybox-static kmod xz-utils zstd cpio

# ---- the kernel, through a private apt configuration for trixie ----
if [ ! -f "$LAB/kernel.stamp" ]; then
  APT="$LAB/apt"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$APT/sources.list"
  O=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o Debug::NoLocking=1)
  log "fetching trixie package lists"
  apt-get "${O[@]}" update -q >&2
  # The versioned image package that linux-image-amd64 currently points at.
  PKG=$(apt-cache "${O[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$PKG" ] || { log "cannot resolve linux-image-amd64"; exit 1; }
  log "fetching $PKG"
  rm -rf "$LAB/kernel" "$LAB/debs" && mkdir -p "$LAB/kernel" "$LAB/debs"
  (cd "$LAB/debs" && apt-get "${O[@]}" download "$PKG" >&2)
  dpkg-deb -x "$LAB"/debs/*.deb "$LAB/kernel"
  # Merged-/usr packages keep modules in usr/lib/modules; depmod wants lib/.
  if [ -d "$LAB/kernel/usr/lib/modules" ]; then
    mkdir -p "$LAB/kernel/lib"
    mv "$LAB/kernel/usr/lib/modules" "$LAB/kernel/lib/modules"
  fi
  VER=$(ls "$LAB/kernel/lib/modules")
  # Decompress modules so that busybox insmod and any modprobe can load them.
  find "$LAB/kernel/lib/modules/$VER" -name '*.ko.xz' -exec xz -d {} +
  find "$LAB/kernel/lib/modules/$VER" -name '*.ko.zst' -exec zstd -q -d --rm {} +
  depmod -b "$LAB/kernel" "$VER"
  echo "$VER" >"$LAB/kernel.stamp"
fi
VER=$(cat "$LAB/kernel.stamp")
MODDIR="$LAB/kernel/lib/modules/$VER"

# ---- the initramfs ----
if [ ! -f "$LAB/initrd.stamp" ] || [ "$HERE/init.sh" -nt "$LAB/initrd.img" ]; then
  log "building the initramfs"
  ROOT=$(mktemp -d)
  trap 'rm -rf "$ROOT"' EXIT
  mkdir -p "$ROOT"/{bin,dev,proc,sys,newroot,lower,upper,out,modules}
  cp "$(command -v busybox)" "$ROOT/bin/busybox"
  for app in sh mount umount mkdir insmod sleep cat echo poweroff chroot ls dmesg chmod printf sed; do ln -s busybox "$ROOT/bin/$app"; done
  # Modules needed before the host's / is there, with their dependencies, in
  # load order.
  want="virtio_pci virtio_console 9p 9pnet_virtio overlay"
  order=()
  resolve() {
    local m=$1 dep
    for done_m in "${order[@]:-}"; do [ "$done_m" = "$m" ] && return; done
    for dep in $(modinfo -b "$LAB/kernel" -k "$VER" -F depends "$m" 2>/dev/null | tr ',' ' '); do resolve "$dep"; done
    order+=("$m")
  }
  for m in $want; do resolve "$m"; done
  : >"$ROOT/modules/order"
  for m in "${order[@]}"; do
    f=$(modinfo -b "$LAB/kernel" -k "$VER" -F filename "$m" 2>/dev/null || true)
    case "$f" in
      ""|"(builtin)") continue ;;
    esac
    cp "$f" "$ROOT/modules/"
    echo "$(basename "$f")" >>"$ROOT/modules/order"
  done
  cp "$HERE/init.sh" "$ROOT/init"
  chmod +x "$ROOT/init"
  (cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1 >"$LAB/initrd.img.new")
  mv "$LAB/initrd.img.new" "$LAB/initrd.img"
  echo ok >"$LAB/initrd.stamp"
fi
echo "$LAB"
