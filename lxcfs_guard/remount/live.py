"""The live side of a repair: find and check the live mount, open the sources a repair clones, and put a
live instance's mount on the host path (swap_mount, the host side of a restart). Split from engine.py, which
runs a repair; both it and the supervisor use these."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from lxcfs_guard.kernel import procfs
from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.remount import discovery
from lxcfs_guard.remount.report import fmt_dev
from lxcfs_guard.remount.steps import _AT_FDCWD, _MOVE, _O_PATH

ENV_NO_BENEATH = "LXCFS_GUARD_NO_BENEATH"  # "1": use detach-then-move even where BENEATH exists (tests, 6.1 parity)


def live_mount(live_root: str, fstype: str, proc_fd: int, answer_timeout: float = 2.0) -> tuple[int, int, bool]:
    """(device, MOUNT_ATTR bits, shared?) of the live mount at `live_root`; OSError if it is dead, hung
    (no statfs answer within `answer_timeout` s, asked from a child: see discovery.answers) or not ours.
    (A clone of a shared mount must be made private; of a private one it already is.)"""
    fd = discovery.open_mount_root(live_root)
    try:
        dev = sc.statx_cached(fd)[1]  # cached attributes: no FUSE request
        real = os.readlink(f"/proc/self/fd/{fd}")
        marker = f" - {fstype} ".encode()
        for line in discovery.read_all("self/mountinfo", proc_fd).split(b"\n"):
            if marker in line:
                m = procfs.parse_mountinfo_line(line.decode(errors="surrogateescape"))
                if m.mount_point == real and m.dev == dev:
                    break
        else:
            raise OSError(errno.ENOENT, f"no {fstype} mount at {live_root}")
        state = discovery.answers(fd, answer_timeout)
    finally:
        os.close(fd)
    if state == discovery.DEAD:
        raise OSError(errno.ENOTCONN, f"{os.strerror(errno.ENOTCONN)} (device {fmt_dev(dev)}: its daemon is gone)")
    if state == discovery.HUNG:
        raise OSError(
            errno.ETIMEDOUT,
            f"device {fmt_dev(dev)} does not answer within {answer_timeout:g} s "
            "(its daemon is hung or stopped); nothing was done",
        )
    if state != discovery.LIVE:
        err = int(state.partition(":")[2] or errno.EIO)
        raise OSError(err, f"statfs: {os.strerror(err)}")
    return dev, sc.attrs_from_options(m.mount_options), any(o.startswith("shared:") for o in m.optional)


def open_sources(live_root: str, sources: Iterable[str]) -> dict[str, int | OSError]:
    """O_PATH fds of the live files, resolved beneath the live root (a mountinfo root column is data)."""
    out: dict[str, int | OSError] = {}
    rootfd = discovery.open_mount_root(live_root)
    try:
        for src in sources:
            if src not in out:
                try:
                    out[src] = sc.openat2(
                        rootfd, src or ".", _O_PATH, sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_XDEV
                    )
                except OSError as e:
                    out[src] = e
    finally:
        os.close(rootfd)
    return out


def use_beneath(beneath: bool | None) -> bool:
    if beneath is None:
        beneath = os.environ.get(ENV_NO_BENEATH, "") not in ("1", "yes", "true")
    return beneath and sc.move_mount_beneath_supported()


# --- swap_mount: the host side of a restart -----------------------------------------------------------------


def _top_mount(path: str) -> procfs.MountInfo | None:
    """The topmost mount on `path` in our own namespace (the one no other mount there sits on: a mount
    slid beneath is listed after the one above it), None if nothing is mounted there."""
    with open("/proc/self/mountinfo", "rb") as f:
        found = [
            m
            for m in (
                procfs.parse_mountinfo_line(line.decode(errors="surrogateescape"))
                for line in f
                if f" {path} ".encode() in line
            )
            if m.mount_point == path
        ]
    under = {m.parent_id for m in found}
    tops = [m for m in found if m.mount_id not in under]
    return tops[-1] if tops else None


def swap_mount(live_path: str, target: str) -> None:
    """In the caller's own mount namespace, make `target` serve the mount at `live_path` (a new or standby
    instance's private mountpoint): a clone of it goes *under* whatever is mounted at `target`
    (MOVE_MOUNT_BENEATH), then the old top is detached, so a reader on the host never finds the mountpoint
    empty. Without BENEATH (kernel < 6.5): detach the old top, then move the clone in. With nothing mounted
    at `target`, or only mounts of another type (the hostPath volume a DaemonSet's pod has there), the clone
    is attached on top. `live_path` stays mounted; the caller may detach it."""
    clone = sc.open_tree(live_path, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
    try:
        real = os.path.realpath(target)
        top, live = _top_mount(real), _top_mount(os.path.realpath(live_path))
        if top is None or live is None or top.fstype != live.fstype:
            # nothing of ours there, maybe a foreign mount (a pod's hostPath volume, a shared bind that
            # propagates to the host): attach on top of it, never detach what is not ours
            sc.move_mount(clone, _AT_FDCWD, real, sc.MOVE_MOUNT_F_EMPTY_PATH)
            return
        if use_beneath(None):
            tfd = os.open(real, _O_PATH)
            try:
                sc.move_mount(clone, tfd, "", _MOVE | sc.MOVE_MOUNT_BENEATH)
                sc.umount2(f"/proc/self/fd/{tfd}", sc.MNT_DETACH)
            finally:
                os.close(tfd)
        else:
            sc.umount2(real, sc.MNT_DETACH)
            sc.move_mount(clone, _AT_FDCWD, real, sc.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(clone)
