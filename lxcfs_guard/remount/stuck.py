"""Repairs an earlier run left stuck in the kernel, so that no run piles another one on top.

A worker waiting for an inode lock a container holds, or a probe child waiting for a daemon that read our
request and never answers, cannot die (see children). Each run that tried the same namespace (or asked the
same device) again would leave one more such process behind, for as long as the container keeps it up:
a container could grow our process count without bound, one per supervisor pass. So a left-behind child
is recorded in `{state_dir}/stuck/<key>` ("mntns-<inode>" or "dev-<maj>:<min>", holding "<pid> <start
time>"), and while that very process still exists the namespace is reported failed (EBUSY) and the device
is not asked again; once it has gone the record is dropped and the next run tries afresh. (A stuck worker
may still finish its move when the lock is let go; the next run then finds the live mount and detaches
whatever is left over: plan.UNCOVER and the live-on-live case.)
"""

from __future__ import annotations

import contextlib
import os

from lxcfs_guard.kernel import procfs
from lxcfs_guard.kernel.files import write_atomic

STUCK = "stuck"


def ns_key(mntns: int) -> str:
    return f"mntns-{mntns}"


def dev_key(dev: int) -> str:
    return f"dev-{os.major(dev)}:{os.minor(dev)}"


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return procfs.parse_stat_start_time(f.read())
    except (OSError, ValueError):
        return None


def _still_there(pid: int) -> bool:
    """A zombie whose threads have all ended is as good as gone (init or our next run reaps it)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if data[data.rindex(b")") + 2 :][:1] != b"Z":
            return True
    return False


def record(state_dir: str, stuck: dict[str, int]) -> None:
    """Remember the children left behind: {key: pid}."""
    if not stuck:
        return
    root = os.path.join(state_dir, STUCK)
    os.makedirs(root, mode=0o700, exist_ok=True)
    for key, pid in stuck.items():
        start = _start_time(pid)
        if start is not None:
            write_atomic(os.path.join(root, key), f"{pid} {start}\n".encode(), mode=0o600)


def active(state_dir: str) -> dict[str, int]:
    """{key: pid} of the recorded children still there (the same process: pid and start time); the
    records of those gone are removed."""
    root = os.path.join(state_dir, STUCK)
    try:
        names = os.listdir(root)
    except OSError:
        return {}
    out: dict[str, int] = {}
    for name in names:
        path = os.path.join(root, name)
        try:
            with open(path, "rb") as f:
                pid_text, start_text = f.read().split()[:2]
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            pid, start = 0, -1
        if pid > 0 and _start_time(pid) == start and _still_there(pid):
            out[name] = pid
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return out
