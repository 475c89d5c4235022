"""The FUSE devices our daemons mounted: `{state_dir}/devices/MAJ:MIN`, one file per device.

Why: the fstype of a FUSE mount is chosen by whoever mounts it (`-o subtype=lxcfs-guard` is free for
anyone with /dev/fuse, a container included), and a container's own daemon answers our liveness probe as
it likes. So "of our fstype and dead" is not enough to act on: `remount` acts only on devices recorded
here (unless told otherwise: `--stale-dev`, `--any-device`). `serve` records its device once its mount
answers; `remount` records the live device it clones from (which covers a stock LXCFS guarded through
`--fstype fuse.lxcfs` from its second start on) and forgets devices that no mount uses any more.

One file per device, created atomically, so writers need no lock; the contents (mountpoint, pid, time)
are for people. A record outlives the daemon on purpose: the binds of a daemon that exited, cleanly or
not, are exactly what must be found later. Imported by fs/ and remount/: depends on nothing of ours but
kernel/.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from lxcfs_guard.kernel.files import write_atomic

DEVICES = "devices"


def _name(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _parse(name: str) -> int | None:
    major, sep, minor = name.partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    return os.makedev(int(major), int(minor))


def record(state_dir: str, dev: int, mountpoint: str) -> None:
    """Remember `dev` as ours (idempotent; a record already there keeps its time)."""
    root = os.path.join(state_dir, DEVICES)
    path = os.path.join(root, _name(dev))
    if os.path.exists(path):
        return
    os.makedirs(root, mode=0o700, exist_ok=True)
    body = {"mountpoint": mountpoint, "pid": os.getpid(), "recorded": time.time()}
    write_atomic(path, json.dumps(body).encode(), mode=0o600)


def recorded(state_dir: str) -> dict[int, float]:
    """{device: when recorded (mtime)} of every record; {} if there are none."""
    root = os.path.join(state_dir, DEVICES)
    out: dict[int, float] = {}
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for name in names:
        dev = _parse(name)
        if dev is None:
            continue
        try:
            out[dev] = os.stat(os.path.join(root, name), follow_symlinks=False).st_mtime
        except OSError:
            continue
    return out


def forget(state_dir: str, devs: set[int]) -> None:
    for dev in devs:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(state_dir, DEVICES, _name(dev)))
