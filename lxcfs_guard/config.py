"""Defaults shared by every command, in one place so `serve`, `remount` and `supervise` never disagree.

Kept import-free (only `os`) because `remount` must start fast.
"""

from __future__ import annotations

import os

FSNAME = "lxcfs-guard"
FSTYPE = "fuse." + FSNAME
LXCFS_FSTYPE = "fuse.lxcfs"

DEFAULT_MOUNTPOINT = "/var/lib/lxcfs"
DEFAULT_STATE_DIR = "/run/lxcfs-guard"

# The files LXCFS users bind over a container's /proc (relative to the mountpoint), in the usual order.
PROC_FILES: tuple[str, ...] = (
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/loadavg",
    "proc/meminfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
)
CPU_ONLINE = "sys/devices/system/cpu/online"
# PSI (LXCFS 7.0): served, and writable when triggers are on; not bound by default (see README)
PRESSURE_FILES: tuple[str, ...] = ("proc/pressure/cpu", "proc/pressure/io", "proc/pressure/memory")
# Every file the filesystem serves (slabinfo is served but not bound by default, like LXCFS setups).
ALL_FILES: tuple[str, ...] = PROC_FILES + ("proc/slabinfo", CPU_ONLINE) + PRESSURE_FILES
# What `attach` and the OCI hook bind by default: the proc files, plus cpu/online where the target exists.
DEFAULT_BINDS: tuple[str, ...] = PROC_FILES + (CPU_ONLINE,)


def default_mountpoint() -> str:
    return os.environ.get("LXCFS_GUARD_MOUNTPOINT") or DEFAULT_MOUNTPOINT


def default_state_dir() -> str:
    return os.environ.get("LXCFS_GUARD_STATE_DIR") or DEFAULT_STATE_DIR


def target_for(source: str) -> str:
    """Where a file of the filesystem is bound inside a container: proc/meminfo -> /proc/meminfo."""
    return "/" + source.lstrip("/")
