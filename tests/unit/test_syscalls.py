"""kernel/syscalls.py against the real kernel: the statx structure matches the kernel's ABI (the offsets the
uapi header gives) and reads what os.stat reads; the per-architecture table refuses an architecture it
does not know instead of calling some other syscall with our arguments."""

from __future__ import annotations

import ctypes
import os
import stat

import pytest

from lxcfs_guard.kernel import syscalls as sc


def test_statx_layout_is_the_kernels() -> None:
    # offsets from include/uapi/linux/stat.h
    assert ctypes.sizeof(sc.Statx) == 256
    assert sc.Statx.stx_mode.offset == 28
    assert sc.Statx.stx_ino.offset == 32
    assert sc.Statx.stx_mtime.offset == 112
    assert sc.Statx.stx_dev_major.offset == 136
    assert sc.Statx.stx_dev_minor.offset == 140
    assert sc.Statx.stx_mnt_id.offset == 144


@pytest.mark.parametrize("path", ["/proc/self/status", "/dev/null", "/", "/sys/fs/cgroup"])
def test_statx_cached_agrees_with_stat(path: str) -> None:
    fd = os.open(path, os.O_PATH)
    try:
        mode, dev = sc.statx_cached(fd)
    finally:
        os.close(fd)
    st = os.stat(path)
    assert (mode, dev) == (st.st_mode, st.st_dev)
    assert stat.S_IFMT(mode) == stat.S_IFMT(st.st_mode)


def test_statx_reports_the_kernels_error() -> None:
    with pytest.raises(FileNotFoundError):
        sc.statx(sc.AT_FDCWD, "/nonexistent/lxcfs-guard", 0)


def test_syscall_table_knows_this_machine_and_refuses_an_unknown_one() -> None:
    assert sc.syscall_number("open_tree") == 428
    assert sc.syscall_number("statx", "x86_64") == 332
    assert sc.syscall_number("statx", "aarch64") == 291
    assert sc.syscall_number("setns", "aarch64") == 268
    with pytest.raises(sc.UnsupportedArchitecture, match="riscv64") as e:
        sc.syscall_number("open_tree", "riscv64")
    assert isinstance(e.value, OSError)


def test_every_architecture_has_every_call() -> None:
    names = {frozenset(t) for t in sc.SYSCALL_NUMBERS.values()}
    assert len(names) == 1


def test_open_tree_and_move_mount_beneath_probe_work_here() -> None:
    fd = sc.open_tree("/proc", sc.OPEN_TREE_CLOEXEC)  # no CLONE: an O_PATH fd of the mount, nothing detached
    try:
        assert sc.statx_cached(fd)[1] == os.stat("/proc").st_dev
    finally:
        os.close(fd)
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    assert sc.move_mount_beneath_supported() == ((major, minor) >= (6, 5))
