"""The FUSE control filesystem (fusectl): the one way to fail every pending request of a wedged FUSE
connection at once. Killing a hung daemon is not always enough (a daemon stuck in D state does not die,
and its connection keeps readers blocked); writing to `abort` ends the connection in the kernel.

A connection's directory is named after the superblock's kernel dev_t, (major << 20) | minor; FUSE
superblocks use anonymous devices (major 0), so in practice it is the minor of `st_dev`.
"""

from __future__ import annotations

import contextlib
import os

from lxcfs_guard.kernel import procfs, syscalls

FUSECTL_DIR = "/sys/fs/fuse/connections"


def connection_name(dev: int) -> str:
    """fusectl directory name of the FUSE superblock whose `st_dev` is `dev`."""
    return str((os.major(dev) << 20) | os.minor(dev))


def ensure_mounted(path: str = FUSECTL_DIR) -> bool:
    """Mount fusectl on `path` if it is not there yet (it often is not on hosts without systemd).
    Returns whether it is mounted now."""
    if is_mounted(path):
        return True
    try:
        syscalls.mount("fusectl", path, "fusectl")
    except OSError as e:
        if e.errno != 16:  # EBUSY: someone mounted it meanwhile
            return False
    return is_mounted(path)


def abort(dev: int, path: str = FUSECTL_DIR) -> bool:
    """Abort the FUSE connection of `dev`: every pending and future request fails with ENOTCONN.
    Returns False when there is no such connection (already gone)."""
    if not ensure_mounted(path):
        return False
    try:
        with open(f"{path}/{connection_name(dev)}/abort", "w") as f:
            f.write("1")
        return True
    except FileNotFoundError:
        return False


def waiting(dev: int, path: str = FUSECTL_DIR) -> int | None:
    """Requests the daemon has not answered yet (a growing number is another sign of a hang)."""
    if not ensure_mounted(path):
        return None
    with contextlib.suppress(OSError, ValueError), open(f"{path}/{connection_name(dev)}/waiting") as f:
        return int(f.read().strip())
    return None


def is_mounted(path: str = FUSECTL_DIR) -> bool:
    with contextlib.suppress(OSError, procfs.ProcessGone):
        return any(m.fstype == "fusectl" for m in procfs.mounts_at(path))
    return False
