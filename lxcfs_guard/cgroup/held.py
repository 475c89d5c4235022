"""Why a reader keeps the cgroup files it renders from open, and re-reads them with pread(2) at offset 0.

Every render reads the same few files of the caller's cgroup (memory.stat and the usage for meminfo,
cpuacct.usage_all for stat, ...). Each open(2) walks the path, allocates the kernel's open-file state and its
seq_file buffer, and close(2) frees them again. A kernfs file reread at offset 0 regenerates its content (the
seq_file starts over), so an fd kept open answers with one syscall instead of three. Measured on this VM
(bench/cgroup_read.py): memory.stat 16.6 us open+read+close against 9.3 us pread, memory.usage_in_bytes 9.3
against 1.7, cpuacct.usage_all 10.2 against 2.7; on a busy node (bench/fleet.py, N=200) the daemon's CPU per
read fell by 5-15%.

What it costs, and its bounds:
- kernel memory: about 5 KB per held file (the open file, kernfs's state, a page of seq_file buffer;
  bench/cgroup_read.py: 4.6-5.2 KB per fd in Slab). At most `budget` files per process (1024, so 5 MB; never more than
  a quarter of the fd limit); past it a file is read the old way. The first files read keep their place,
  and a file not read for `idle` seconds is closed, so a node whose containers change frees the old ones'.
- a removed cgroup: a held file of it answers ENODEV, and is closed then; the path is opened afresh, so a
  cgroup made again under the same name (a restarted container) is read, not its dead predecessor.
- other filesystems: only files on a cgroup filesystem are held (see `_on_cgroupfs`).
- fork: a child does not keep its parent's files (they would be read through the same open file in two
  processes, and the parent would never close them): the child starts empty.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
import weakref

from lxcfs_guard.cgroup.base import parse_int_text, read_text
from lxcfs_guard.kernel.syscalls import CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, fstatfs_type

CHUNK = 65536  # the same first read as base.read_text: a shorter answer is the whole file (one seq record)
BUDGET = 1024  # held files per process
IDLE = 10.0  # seconds a held file may go unread before it is closed


class HeldFiles:
    __slots__ = ("budget", "idle", "_fds", "_gen", "_next_sweep", "__weakref__")

    def __init__(self, budget: int = BUDGET, idle: float = IDLE) -> None:
        self.budget = -budget  # negative until the first file is held: then capped by the fd limit
        self.idle = idle
        self._fds: dict[str, list[int]] = {}  # path -> [fd, the sweep generation it was last read in]
        self._gen = 0
        self._next_sweep = time.monotonic() + idle
        _ALL.add(self)

    def __len__(self) -> int:
        return len(self._fds)

    def read(self, path: str, errors: str = "replace") -> str | None:
        """The whole file (a cgroup file: one seq_file record), or None if it does not exist."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self.sweep(now)
        held = self._fds.get(path)
        if held is not None:
            try:
                data = os.pread(held[0], CHUNK, 0)
            except OSError:  # ENODEV: its cgroup was removed (and may have been made again since)
                data = None
            if data is not None and len(data) < CHUNK:
                held[1] = self._gen
                return data.decode("utf-8", errors)
            self._close(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        keep = False
        try:
            data = os.pread(fd, CHUNK, 0)
            if len(data) < CHUNK:
                if self.budget < 0:
                    self.budget = _fd_share(-self.budget)
                keep = len(self._fds) < self.budget and _on_cgroupfs(fd)
        finally:
            if keep:
                self._fds[path] = [fd, self._gen]
            else:
                os.close(fd)
        if len(data) == CHUNK:  # longer than a cgroup file ever is: never held, read whole the usual way
            return read_text(path, errors, one_record=False)
        return data.decode("utf-8", errors)

    def read_int(self, path: str) -> int | None:
        """One number of a file (see base.parse_int_text)."""
        return parse_int_text(self.read(path))

    def sweep(self, now: float) -> None:
        """Close the files not read since the sweep before last (between `idle` and twice that ago)."""
        self._next_sweep = now + self.idle
        stale = self._gen - 1
        for path in [p for p, (_, gen) in self._fds.items() if gen <= stale]:
            self._close(path)
        self._gen += 1

    def close(self) -> None:
        for path in list(self._fds):
            self._close(path)

    def _close(self, path: str) -> None:
        held = self._fds.pop(path, None)
        if held is not None:
            with contextlib.suppress(OSError):
                os.close(held[0])

    def _forget_inherited(self) -> None:
        for fd, _ in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}


def _fd_share(want: int) -> int:
    """`want`, but at most a quarter of the fd limit: pidfds (fs/caller.py) and requests need the rest. Asked
    at the first file held, after the daemon has raised its limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return want if soft == resource.RLIM_INFINITY else max(0, min(want, soft // 4))


def _on_cgroupfs(fd: int) -> bool:
    """Only a cgroup filesystem's file is held: there a removed file answers ENODEV, so a held one is never
    read past its cgroup. A regular file (a test's fixture tree) read through a kept fd would go on giving
    what it said when it was unlinked."""
    try:
        return fstatfs_type(fd) in (CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC)
    except OSError:
        return False


_ALL: weakref.WeakSet[HeldFiles] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for files in list(_ALL):
        files._forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)
