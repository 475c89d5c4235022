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


def test_mountinfo_keeps_non_utf8_bytes_of_any_line() -> None:
    """H1: a mount table holds whatever bytes a mounter chose (fusermount3 -o fsname=\\xff is open to every
    user): bytes parse, nothing is lost, and the fields give the bytes back."""
    text = (LINE + "\n" + "836 27 0:68 / /tmp/m\xff rw,nosuid - fuse.\xff \xff rw,user_id=65534\n").encode("latin-1")
    ours, theirs = procfs.parse_mountinfo(text)
    assert ours.fstype == "fuse.lxcfs-guard"
    assert os.fsencode(theirs.fstype) == b"fuse.\xff" and os.fsencode(theirs.source) == b"\xff"
    assert os.fsencode(theirs.mount_point) == b"/tmp/m\xff"


def test_mountinfo_splits_on_the_kernels_spaces_only() -> None:
    """The kernel escapes only space, tab, newline and backslash: a mount point holding \\x1c or U+2028 is
    one field, not a forged line or forged fields (str.split()/splitlines() would split there)."""
    forged = "/tmp/a\x1c-\x1cfuse.lxcfs-guard\x1clxcfs-guard\x1crw\u2028612\x1c598\x1c0:52\x1c/\x1c/proc/meminfo"
    (m,) = procfs.parse_mountinfo(f"40 1 0:9 / {forged} rw - tmpfs tmpfs rw\n")
    assert m.mount_point == forged and m.fstype == "tmpfs" and m.source == "tmpfs"


def test_mountinfo_of_a_real_mount_named_with_control_characters(tmp_path) -> None:
    target = tmp_path / "a\x1c-\x1cfuse.lxcfs-guard\x1cx"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "hostile", str(target)], check=True)
    try:
        (m,) = procfs.mounts_at(str(target))
        assert m.fstype == "tmpfs" and m.mount_point == str(target)
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)
