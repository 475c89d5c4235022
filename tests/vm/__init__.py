"""A real cgroup v2 machine for the `v2` tests: a stock Debian kernel booted under qemu (software emulation).

This host runs cgroup v1, so `python -m tests.vm.run [pytest args]` boots the installed `linux-image-amd64`
kernel with a tiny busybox initramfs, shares the host's root read-only over 9p (with a tmpfs overlay on top, so
the project checkout and its virtualenv run unchanged inside), mounts a full cgroup2 hierarchy with every
controller enabled, runs `pytest -m v2` there and brings back its exit code and junit report (design.md §7b).

    initramfs.py  find the kernel and its modules, build (and cache) the initramfs
    init.sh       stage 1 (/init in the initramfs): load modules, 9p root + overlay, switch_root
    stage2.py     stage 2 (PID 1 in the overlay root): mounts, cgroup2 controllers, run the job, power off
    junit.py      count what ran in the junit report (pure)
    run.py        the host side: qemu under a hard timeout, console streamed, results collected
"""
