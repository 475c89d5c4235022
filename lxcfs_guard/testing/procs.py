"""Processes the tests start, always ended by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

from lxcfs_guard.kernel.procfs import mounts_at


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """End a process we started, by its pid: `sig`, then SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def is_mounted(path: str) -> bool:
    return bool(mounts_at(path))


def force_unmount(path: str) -> None:
    """Detach every mount stacked on `path` (lazy, so a dead FUSE connection does not block it)."""
    for _ in range(10):
        if not is_mounted(path):
            return
        subprocess.run(["umount", "-l", path], check=False, capture_output=True)


def daemon_processes(pid: int) -> list[int]:
    """A FUSE daemon's pid and its children's: `serve`'s workers are children of the pid that holds the
    connection, so stopping only that pid no longer stops the serving (it is not what a hang looks like)."""
    out = [pid]
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def signal_daemon(pid: int, sig: int) -> None:
    """`sig` to the daemon and every process of it (workers first, so a SIGSTOP leaves none serving)."""
    for p in reversed(daemon_processes(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
