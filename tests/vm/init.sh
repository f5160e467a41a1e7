#!/bin/sh
# PID 1 of the VM lab's busybox initramfs (lab.sh builds it; run-in-vm.sh
# boots it). It
#   1. loads 9p, its virtio transport and overlayfs (the initramfs has them),
#   2. mounts the control share (tag blkctl: vm.conf, shares, run.sh, rc),
#   3. mounts the HOST's / read-only over 9p (tag hostroot) under a tmpfs
#      overlay, so every host binary and this checkout work unchanged,
#   4. binds the trixie module tree at /lib/modules/KVER inside it, mounts
#      proc, sys, dev, /run, ... and the read-write shares (tags share0..),
#   5. chroots and runs run.sh (the test script, in its cwd),
#   6. writes the exit status to the control share and prints a marker line,
#      then powers off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

TOKEN=""
# Power off through QEMU's isa-debug-exit port (instant, and without the
# kernel's "reboot: Power down" line on the console); poweroff -f otherwise.
off() {
  printf '\001' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
  poweroff -f
  sleep 10
}
fail() {
  echo "vm-init: error: $*" >/dev/console
  echo "BLKSTACK_VM_FAIL $TOKEN" >/dev/console
  sync
  off
}

while read -r m; do
  insmod "/modules/$m" || fail "insmod $m failed"
done </modules/order

O9P=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$O9P,cache=none" blkctl /ctl || fail "cannot mount the control share"
[ -f /ctl/vm.conf ] || fail "no vm.conf on the control share"
. /ctl/vm.conf
[ -n "$TOKEN" ] || fail "vm.conf has no TOKEN"

# The host's / (read-only, cached: it does not change under a test) with a
# tmpfs on top for the VM's writes.
mount -t 9p -o "$O9P,ro,cache=loose" hostroot /lower || fail "cannot mount the host root"
mount -t tmpfs -o "mode=0755,size=${OVERLAY_SIZE:-75%}" tmpfs /upper || fail "tmpfs"
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot ||
  fail "cannot mount the overlay root"

R=/newroot
mount -t proc proc $R/proc || fail "proc"
mount -t sysfs sysfs $R/sys || fail "sysfs"
mount -t devtmpfs devtmpfs $R/dev || fail "devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm $R/dev/mqueue
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t mqueue mqueue $R/dev/mqueue 2>/dev/null
mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "/run"
mount -t configfs configfs $R/sys/kernel/config 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
# /tmp stays the overlay: the host's /tmp shows through (a checkout or build
# directory there keeps working) and the VM's writes stay in the VM.
chmod 1777 $R/tmp 2>/dev/null

# The trixie kernel's full module tree, at the place modprobe looks.
mkdir -p "$R/lib/modules/$KVER" || fail "mkdir /lib/modules/$KVER"
mount -o bind "/lower$MODDIR" "$R/lib/modules/$KVER" || fail "cannot bind the module tree $MODDIR"

# The control share, for run.sh and for tests that want it.
mkdir -p $R/run/blkstack-vm
mount -o bind /ctl $R/run/blkstack-vm || fail "cannot bind the control share"

# Read-write host directories, each at its host path.
if [ -f /ctl/shares ]; then
  while read -r tag path; do
    [ -n "$tag" ] || continue
    mkdir -p "$R$path" || fail "mkdir $path"
    mount -t 9p -o "$O9P,cache=none" "$tag" "$R$path" || fail "cannot mount share $path"
  done </ctl/shares
fi

# Module requests from the kernel itself (a file system type at mount time,
# a block major on open) run modprobe from here: send them into the root.
printf '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n' >/bin/modprobe-chroot
chmod 0755 /bin/modprobe-chroot
echo /bin/modprobe-chroot >/proc/sys/kernel/modprobe

# Coldplug: load the drivers of the lab's emulated devices as udev would at
# boot: virtio (vendor 0x1af4) and NVMe (class 0x0108xx) PCI functions and
# every virtio device. The chipset's own devices (AHCI, SMBus, LPC) are left
# alone: loading them costs seconds under TCG. Module options come from the
# kernel command line (run-in-vm.sh --append nvme.poll_queues=2).
if [ "${COLDPLUG:-1}" = 1 ]; then
  aliases=""
  for d in /sys/bus/pci/devices/*; do
    read -r vendor <"$d/vendor"
    read -r class <"$d/class"
    case "$vendor:$class" in
      0x1af4:*|*:0x0108*) aliases="$aliases $(cat "$d/modalias")" ;;
    esac
  done
  [ -z "$aliases" ] || chroot $R /sbin/modprobe -a -b -q $aliases
  aliases=$(cat /sys/bus/virtio/devices/*/modalias 2>/dev/null)
  [ -z "$aliases" ] || chroot $R /sbin/modprobe -a -b -q $aliases
fi

ip link set lo up || fail "cannot bring lo up"
hostname blkstack-vm
# The console is the serial port: no CR before each LF on the host side.
stty -F /dev/console -onlcr 2>/dev/null

cut_uptime() { read -r up _ </proc/uptime; echo "$up"; }
cut_uptime >/ctl/boot-uptime
if [ "${INTERACTIVE:-0}" = 1 ]; then
  chroot $R /bin/bash /run/blkstack-vm/run.sh </dev/console >/dev/console 2>&1
else
  chroot $R /bin/bash /run/blkstack-vm/run.sh </dev/null >/dev/console 2>&1
fi
rc=$?
cut_uptime >/ctl/end-uptime
sync
# RC_CHANNEL=console (host-selftest.sh's check of the fallback): no rc file.
[ "${RC_CHANNEL:-both}" = console ] || echo "$rc" >/ctl/rc
# A fresh line: the script's last output may lack its newline.
printf '\nBLKSTACK_VM_EXIT %s %s\n' "$TOKEN" "$rc" >/dev/console
sync
off
