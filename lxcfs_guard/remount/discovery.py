"""Discovery: what the kernel shows, whoever made it. Every mount namespace on the host that holds a
mount of our fstype, with one live pid in it, read as cheaply as possible: one stat of /proc/PID/ns/mnt per
process to dedupe namespaces, one read of /proc/PID/mountinfo per namespace, and only the lines of our
fstype are parsed. This finds binds nobody registered (Kubernetes hostPath volumes, hand-made binds).

Plus the liveness probe: a connection whose daemon died answers every request with ENOTCONN, but a hung
daemon (SIGSTOPped, wedged) never answers, so each distinct device is probed by statfs from a forked child
with a deadline, never from this process.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from collections.abc import Iterable

from lxcfs_guard.kernel import procfs, syscalls
from lxcfs_guard.remount.plan import Mount, NsView


DEAD = "dead"
LIVE = "live"
HUNG = "hung"
DEAD_ERRNOS = frozenset((errno.ENOTCONN, errno.ECONNABORTED))


def open_proc() -> int:
    """An fd on the host's /proc: every later lookup is relative to it, so it does not matter which root
    or mount namespace the caller is in when it uses it."""
    return os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def read_all(name: str, dir_fd: int) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_ours(data: bytes, fstype: str) -> list[Mount]:
    """The mounts of `fstype` in a mountinfo text (pure). Lines of other types are skipped unparsed: a
    container's mountinfo is mostly the host's mounts and this runs once per namespace."""
    marker = f" - {fstype} ".encode()
    if marker not in data:
        return []
    out = []
    for raw in data.split(b"\n"):
        if marker in raw:
            mi = procfs.parse_mountinfo_line(raw.decode(errors="surrogateescape"))
            out.append(Mount(mi.mount_id, mi.parent_id, mi.dev, mi.root, mi.mount_point, mi.mount_options))
    return out


def scan(fstype: str, proc_fd: int, *, pids: Iterable[int] | None = None, skip: Iterable[int] = ()) -> dict[int, NsView]:
    """Mount namespaces (by inode) holding a mount of `fstype`, each with the first pid seen in it.

    `pids` limits the scan (default: every process); namespaces in `skip` (the caller's own) are not read.
    A namespace whose first pid shows no mount of ours is not looked at again through another pid, so a
    process chrooted somewhere else in a namespace can hide binds that are outside its root: containers
    keep their init at their root, which is the pid discovery meets first.
    """
    seen = set(skip)
    found: dict[int, NsView] = {}
    if pids is None:
        pids = sorted(int(n) for n in os.listdir(proc_fd) if n.isdigit())
    for pid in pids:
        try:
            ino = os.stat(f"{pid}/ns/mnt", dir_fd=proc_fd).st_ino
            if ino in seen:
                continue
            seen.add(ino)
            mounts = parse_ours(read_all(f"{pid}/mountinfo", proc_fd), fstype)
        except OSError:  # exited meanwhile, or a kernel thread we may not look into
            continue
        if mounts:
            found[ino] = NsView(ino, pid, mounts)
    return found


def identity(pid: int, proc_fd: int) -> tuple[int | None, int | None]:
    """(start time, mount-namespace inode) of `pid` now; (None, None) if it does not exist."""
    try:
        start = procfs.parse_stat_start_time(read_all(f"{pid}/stat", proc_fd))
        return start, os.stat(f"{pid}/ns/mnt", dir_fd=proc_fd).st_ino
    except OSError:
        return None, None


def _probe_child(proc_fd: int, pid: int, target: str, w: int) -> None:
    try:
        root = os.open(f"{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_fd)
        fd = syscalls.openat2(root, target.lstrip("/") or ".", os.O_PATH | os.O_CLOEXEC,
                              syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_SYMLINKS)
        os.fstatvfs(fd)
        code = 0
    except OSError as e:
        code = e.errno or 255
    os.write(w, bytes((min(code, 255),)))


def probe(samples: dict[int, tuple[int, str]], proc_fd: int, timeout: float = 1.0) -> dict[int, str]:
    """For each device: DEAD, LIVE, HUNG (no answer within `timeout`) or "error:<errno>" (could not reach
    the sample path). `samples[dev]` is a (pid, target) whose top mount is on that device. One forked child
    per device, all at once, so one hung daemon costs one deadline, not one per device."""
    children: dict[int, tuple[int, int]] = {}  # read fd -> (dev, child pid)
    for dev, (pid, target) in samples.items():
        r, w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                os.close(r)
                _probe_child(proc_fd, pid, target, w)
            finally:
                os._exit(0)
        os.close(w)
        children[r] = (dev, child)
    out: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    poller = select.poll()
    for r in children:
        poller.register(r, select.POLLIN | select.POLLHUP)
    pending = set(children)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for r, _ in poller.poll(left * 1000):
            data = os.read(r, 1)
            dev = children[r][0]
            code = data[0] if data else 255
            out[dev] = LIVE if code == 0 else DEAD if code in DEAD_ERRNOS else f"error:{code}"
            poller.unregister(r)
            pending.discard(r)
    for r, (dev, child) in children.items():
        if r in pending:
            out[dev] = HUNG
            os.kill(child, signal.SIGKILL)
        os.close(r)
        os.waitpid(child, 0)
    return out
