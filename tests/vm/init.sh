#!/bin/sh
# PID 1 of the lab's initramfs: mount the host's / (9p, read-only) under a
# tmpfs overlay, put the trixie modules at /lib/modules, then chroot and run
# the test script named on the kernel command line. Its exit status is written
# to the results share and printed as a marker line.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m 2>/dev/null; done
arg() { sed -n "s/.*blkstack.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=1048576,cache=loose hostroot /lower || { echo "BLKSTACK_VM_EXIT=120"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 out /out || { echo "BLKSTACK_VM_EXIT=121"; poweroff -f; }
mount -t tmpfs -o size=75% tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || { echo "BLKSTACK_VM_EXIT=122"; poweroff -f; }
VER=$(arg kver)
mkdir -p /newroot/lib/modules/$VER
mount --bind /lower$(arg moddir) /newroot/lib/modules/$VER
for d in proc sys dev; do mount --move /$d /newroot/$d 2>/dev/null || mount -t $d $d /newroot/$d; done
mkdir -p /newroot/dev/pts /newroot/dev/shm /newroot/tmp /newroot/run /newroot/vm-out
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/run
mount --bind /out /newroot/vm-out
# The kernel's own module requests (e.g. a file system type at mount) run
# modprobe in this initramfs: send them into the host root.
printf '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n' >/bin/modprobe-chroot
chmod +x /bin/modprobe-chroot
echo /bin/modprobe-chroot >/newroot/proc/sys/kernel/modprobe
cd /newroot
chroot /newroot /bin/sh -c 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root; ip link set lo up 2>/dev/null; cd "$(cat /vm-out/cwd)"; exec /bin/bash /vm-out/script' </dev/console >/dev/console 2>&1
rc=$?
echo $rc >/out/rc
echo "BLKSTACK_VM_EXIT=$rc"
sync
poweroff -f
