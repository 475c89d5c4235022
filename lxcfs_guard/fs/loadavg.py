"""A cheap per-cgroup load average: every 5 s count the running (R) and uninterruptible (D) threads of
the cgroups someone read /proc/loadavg for recently, and decay the three averages the kernel's way.

Only cgroups read within `idle_after` seconds are sampled (LXCFS samples every container, and holds a
lock while doing it: #407); forgotten ones are dropped, so memory stays bounded.
"""

from __future__ import annotations

import logging
import os
import time

from lxcfs_guard.cgroup import CgroupGone, CgroupReader, CgroupRef
from lxcfs_guard.fs.views.loadavg import decay

log = logging.getLogger(__name__)

INTERVAL = 5.0


class _Entry:
    __slots__ = ("avg", "running", "total", "last_read")

    def __init__(self) -> None:
        self.avg = (0, 0, 0)
        self.running = 0
        self.total = 0
        self.last_read = 0.0


def count_threads(pids: list[int], proc: str = "/proc") -> tuple[int, int]:
    """(threads in state R or D, all threads) of these processes; processes that exit meanwhile are skipped."""
    active = total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"{proc}/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"{proc}/{pid}/task/{tid}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            total += 1
            state = data[data.rindex(b")") + 2 : data.rindex(b")") + 3]
            if state in (b"R", b"D"):
                active += 1
    return active, total


class LoadSampler:
    def __init__(self, reader: CgroupReader, proc: str = "/proc", idle_after: float = 600.0, max_cgroups: int = 1024) -> None:
        self.reader = reader
        self.proc = proc
        self.idle_after = idle_after
        self.max_cgroups = max_cgroups
        self._entries: dict[CgroupRef, _Entry] = {}

    def get(self, ref: CgroupRef) -> tuple[tuple[int, int, int], int, int] | None:
        """Current (averages, running, total) for `ref`; registers it for sampling. The first read of a
        cgroup samples it at once so the task counts are real (averages start at 0, as after boot)."""
        entry = self._entries.get(ref)
        if entry is None:
            if len(self._entries) >= self.max_cgroups:
                self._forget(time.monotonic(), force=True)
            entry = _Entry()
            try:
                self._sample(ref, entry, decay_too=False)
            except (CgroupGone, OSError):
                return None
            self._entries[ref] = entry
        entry.last_read = time.monotonic()
        return entry.avg, entry.running, entry.total

    def _sample(self, ref: CgroupRef, entry: _Entry, decay_too: bool = True) -> None:
        pids = self.reader.procs(ref)
        if pids is None:
            raise CgroupGone(ref.key)
        active, total = count_threads(pids, self.proc)
        entry.running, entry.total = active, total
        if decay_too:
            entry.avg = decay(entry.avg, active)

    def tick(self) -> None:
        """One 5-second step for every cgroup read recently."""
        now = time.monotonic()
        self._forget(now)
        for ref, entry in list(self._entries.items()):
            try:
                self._sample(ref, entry)
            except (CgroupGone, OSError):
                self._entries.pop(ref, None)

    def _forget(self, now: float, force: bool = False) -> None:
        stale = [r for r, e in self._entries.items() if now - e.last_read > self.idle_after]
        if force and not stale:
            stale = sorted(self._entries, key=lambda r: self._entries[r].last_read)[: max(1, len(self._entries) // 4)]
        for r in stale:
            del self._entries[r]

    async def run(self, interval: float = INTERVAL) -> None:
        import trio

        while True:
            await trio.sleep(interval)
            try:
                self.tick()
            except Exception:  # never let the sampler take the daemon down
                log.exception("loadavg sampler")

    def __len__(self) -> int:
        return len(self._entries)
