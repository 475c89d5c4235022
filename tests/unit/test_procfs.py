"""The /proc parsers the remount engine trusts for identity and discovery."""

from __future__ import annotations

import os
import subprocess

from lxcfs_guard.kernel import procfs

LINE = (
    "612 598 0:52 /proc/meminfo /proc/meminfo ro,nosuid,nodev,relatime master:7 - fuse.lxcfs-guard lxcfs-guard "
    "rw,user_id=0,group_id=0,allow_other"
)


def test_mountinfo_line_fields() -> None:
    m = procfs.parse_mountinfo_line(LINE)
    assert (m.mount_id, m.parent_id, m.major, m.minor) == (612, 598, 0, 52)
    assert m.root == "/proc/meminfo" and m.mount_point == "/proc/meminfo"
    assert m.optional == ("master:7",)
    assert m.fstype == "fuse.lxcfs-guard" and m.source == "lxcfs-guard"
    assert m.read_only and m.dev == os.makedev(0, 52)


def test_mountinfo_unescapes_octal_and_handles_no_optional_fields() -> None:
    m = procfs.parse_mountinfo_line("30 1 0:5 / /var/lib/my\\040dir\\134x rw - tmpfs tmpfs rw")
    assert m.mount_point == "/var/lib/my dir\\x"
    assert m.optional == () and not m.read_only


def test_stat_start_time_survives_hostile_comm() -> None:
    # A process can name itself ") R 1 2 3": only the last ')' ends comm.
    fields = " ".join(str(i) for i in range(3, 53))
    data = f"42 (evil) R 1 2 3) {fields}".encode()
    assert procfs.parse_stat_start_time(data) == 22


def test_identity_of_a_real_process_and_gone_pid() -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        assert procfs.pid_start_time(p.pid) >= procfs.pid_start_time(1)
        assert procfs.ns_inode(p.pid) == procfs.ns_inode("self")
    finally:
        p.kill()
        p.wait()
    try:
        procfs.pid_start_time(p.pid)
    except procfs.ProcessGone:
        pass
    else:
        raise AssertionError("a reaped pid must read as gone")


def test_read_mountinfo_of_self_has_root() -> None:
    assert any(m.mount_point == "/" for m in procfs.read_mountinfo())


def test_mounts_at_lists_only_the_mounts_on_that_path() -> None:
    assert procfs.mounts_at("/proc")[-1].fstype == "proc"
    assert procfs.mounts_at("/proc/self") == []  # a path inside a mount is not a mount point
