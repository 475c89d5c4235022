"""Forked children that can never hold up their parent: every wait has a deadline, and a child that
cannot be reaped is left behind.

A child that touches a container's mounts can end up in uninterruptible sleep: a FUSE daemon that read
our request and never answers it (the kernel then waits it out, even after SIGKILL), or a move_mount
waiting for an inode lock a container holds. Such a child neither exits nor dies, so `waitpid(pid, 0)` on
it would wait forever. Each wait therefore polls a pidfd (readable once the child has exited) until a
deadline and only then calls waitpid, which is then immediate. A child still there after SIGKILL and a
short grace is recorded in LEFT_BEHIND and reaped without waiting by a later call (`reap_left_behind`), or
by init once we exit.

Parent-only fds (the remount lock) are closed in every child right after fork (os.register_at_fork): a
forked child shares the parent's open file description, so a stuck child would otherwise keep the flock
for as long as it is stuck, and every later run would wait for it. Likewise each of our children puts its
stdio on /dev/null first (`quiet`), so a stuck one does not keep the caller's stdout pipe open.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time

LEFT_BEHIND: set[int] = set()
_PARENT_ONLY: set[int] = set()


def _close_parent_only() -> None:  # pragma: no cover - runs in the child
    for fd in list(_PARENT_ONLY):
        with contextlib.suppress(OSError):
            os.close(fd)
    _PARENT_ONLY.clear()
    LEFT_BEHIND.clear()  # not our children


os.register_at_fork(after_in_child=_close_parent_only)


def quiet() -> None:  # pragma: no cover - runs in the child
    """In a freshly forked child of ours: stdin, stdout and stderr on /dev/null. A child that gets stuck
    must not hold the caller's pipes open either: whoever reads our output (a shell's `$(...)`, the OCI
    runtime, a test) would wait for their end as long as the child is stuck."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def parent_only(fd: int) -> int:
    """Mark `fd` to be closed in every child forked while it is open (call `release` before closing it)."""
    _PARENT_ONLY.add(fd)
    return fd


def release(fd: int) -> None:
    _PARENT_ONLY.discard(fd)


def pidfd(pid: int) -> int:
    """A pidfd for our own child `pid` (it cannot be reaped by anyone else, so the pid is still it)."""
    return os.pidfd_open(pid)


def wait(pid: int, fd: int, deadline: float) -> bool:
    """Reap child `pid` (pidfd `fd`) if it exits before `deadline` (time.monotonic()); True if reaped."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if poller.poll(max(0.0, left) * 1000):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return True
        if left <= 0:
            return False


def kill_and_reap(pid: int, fd: int, grace: float = 0.5) -> bool:
    """SIGKILL child `pid` and reap it within `grace` seconds; else leave it behind (True: reaped).
    Closes `fd`."""
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if wait(pid, fd, time.monotonic() + grace):
            return True
        LEFT_BEHIND.add(pid)
        return False
    finally:
        os.close(fd)


def reap_left_behind() -> int:
    """Reap, without waiting, the children left behind earlier that have exited since; how many remain."""
    for pid in list(LEFT_BEHIND):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            LEFT_BEHIND.discard(pid)
    return len(LEFT_BEHIND)


def state(pid: int) -> str:
    """The one-letter state of `pid` (D: uninterruptible sleep), "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 :][:1].decode()
    except (OSError, ValueError):
        return ""
