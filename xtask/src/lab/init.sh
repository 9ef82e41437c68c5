#!/bin/busybox sh
# PID 1 of the lab VM (busybox initramfs built by xtask/src/lab/vm.rs).
# Mounts the host root read-only over 9p with tmpfs overlays where the guest must write,
# mounts the scenario's output dir (second 9p share, writable) at the same path as on the
# host, then runs $LAB_OUT/run.sh in a chroot and reports its exit code on the console.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods.order); do insmod "/mods/$m" || echo "lab-init: insmod $m failed"; done
OUT=
for a in $(cat /proc/cmdline); do case $a in lab.out=*) OUT=${a#lab.out=} ;; esac; done
R=/newroot
fail() { echo "lab-init: $*"; echo "LAB-EXIT-CODE=125"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R || fail "9p mount of the host root failed"
mkdir -p /ovl
mount -t tmpfs -o size=512m tmpfs /ovl
# /tmp too is an overlay, not a bare tmpfs: a work tree (and the binaries and output dir
# the scenario uses) may live under the host's /tmp, and must stay visible there.
for d in etc var root tmp; do
	mkdir -p /ovl/$d/u /ovl/$d/w
	mount -t overlay overlay -o lowerdir=$R/$d,upperdir=/ovl/$d/u,workdir=/ovl/$d/w $R/$d || fail "overlay on /$d failed"
done
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
# bash process substitution needs /dev/fd.
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
mount -t tmpfs tmpfs $R/run
# The kernel's module autoload runs this path outside the chroot: hop into it.
printf '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n' >/modprobe
chmod +x /modprobe
echo /modprobe >/proc/sys/kernel/modprobe
chroot $R /sbin/modprobe configfs
mount -t configfs configfs $R/sys/kernel/config
mount -t tracefs tracefs $R/sys/kernel/tracing
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t bpf bpf $R/sys/fs/bpf
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
[ -n "$OUT" ] || fail "no lab.out= on the kernel command line"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 labout $R$OUT || fail "9p mount of the output dir $OUT failed"
hostname lab
echo "LAB-INIT-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
	/bin/bash "$OUT/run.sh" </dev/console >/dev/console 2>&1
rc=$?
echo "LAB-EXIT-CODE=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
