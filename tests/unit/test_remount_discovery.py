"""Discovery's mountinfo filter (pure part), on a container's mountinfo captured from a light container."""

from __future__ import annotations

import os
from pathlib import Path

from lxcfs_guard.remount.discovery import parse_ours

FIXTURE = (Path(__file__).parent / "fixtures" / "remount" / "container_mountinfo.txt").read_bytes()


def test_only_lines_of_our_fstype_are_kept() -> None:
    ours = parse_ours(FIXTURE, "fuse.lxcfs-guard")
    assert [m.mount_id for m in ours] == [144, 145, 146, 147, 306, 307, 308]
    lxcfs = parse_ours(FIXTURE, "fuse.lxcfs")  # a prefix of ours: must not match fuse.lxcfs-guard lines
    assert [m.mount_id for m in lxcfs] == [150]


def test_fields_are_what_the_plan_needs() -> None:
    m = parse_ours(FIXTURE, "fuse.lxcfs-guard")[0]
    assert (m.mount_id, m.parent_id, m.dev) == (144, 141, os.makedev(0, 39))
    assert (m.root, m.target) == ("/proc/cpuinfo", "/proc/cpuinfo")
    assert m.options == "ro,nosuid,nodev,relatime"


def test_escaped_paths_are_decoded() -> None:
    m = parse_ours(FIXTURE, "fuse.lxcfs-guard")[-1]
    assert m.target == "/proc/with space" and m.root == "/proc/with space"


def test_no_mount_of_ours() -> None:
    assert parse_ours(FIXTURE, "fuse.other") == []
    assert parse_ours(b"", "fuse.lxcfs-guard") == []
