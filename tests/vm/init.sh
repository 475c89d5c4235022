#!/bin/busybox sh
# Stage 1 of the cgroup v2 test VM (/init in the initramfs; see tests/vm/__init__.py).
# Loads the modules, mounts the host's root read-only over 9p with a tmpfs overlay on top (so the project checkout
# and its virtualenv appear at their host paths and stay writable inside), mounts the results share at /vmshare and
# hands over to stage 2, whose path the host passes on the kernel command line as lgstage2=... (an environment
# variable here). Any failure powers off at once; the host sees no exit code in the share and reports it.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "lxcfs-guard-vm: stage 1 failed: $*"
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r mod opts; do
    # shellcheck disable=SC2086  # options are separate words
    insmod "$mod" $opts || fail "insmod $mod"
done < /modules/load.list

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /lower || fail "9p hostroot"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "overlay root"
mkdir -p /newroot/vmshare
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share /newroot/vmshare || fail "9p share"
[ -n "$lgstage2" ] || fail "no lgstage2= on the kernel command line"
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /usr/bin/python3 "$lgstage2"
