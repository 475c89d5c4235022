"""A cheap per-cgroup load average: every 5 s count the running (R) and uninterruptible (D) threads of
the cgroups someone read /proc/loadavg for recently, and decay the three averages the kernel's way.

Only cgroups read within `idle_after` seconds are sampled (LXCFS samples every container, and holds a
lock while doing it: #407); forgotten ones are dropped, so memory stays bounded. With `serve`'s workers the
sampler runs in a process of its own (see the second half of this module), never on a serving path.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
import os
import socket
import struct
import time

# hashlib would load OpenSSL (3 MB resident in the holder) for a hash that _blake2 has on its own
from _blake2 import blake2b
from typing import Protocol

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
    """(threads in state R or D, all threads) of these processes; processes and threads that exit meanwhile
    are skipped. A stat file is read with os.open/os.read: with a buffered file object around each read, three
    single-threaded processes took 74-93 us instead of 51-58 (timeit, this VM), and the holder's sampler
    counts every registered cgroup each tick (1,000 of them in bench/fleet.py --n 1000)."""
    active = total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"{proc}/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fd = os.open(f"{proc}/{pid}/task/{tid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                data = os.read(fd, 4096)  # the state is before the 4 KB mark even with a 16-byte comm
            except OSError:
                continue
            finally:
                os.close(fd)
            end = data.rfind(b")")  # the comm may itself hold ") "
            if end < 0:
                continue
            total += 1
            if data[end + 2 : end + 3] in (b"R", b"D"):
                active += 1
    return active, total


class LoadSource(Protocol):
    """Where Content reads a cgroup's loadavg: the sampler itself (one process) or a worker's SharedLoad."""

    def get(self, ref: CgroupRef) -> tuple[tuple[int, int, int], int, int] | None: ...


class LoadSampler:
    def __init__(
        self, reader: CgroupReader, proc: str = "/proc", idle_after: float = 600.0, max_cgroups: int = 1024
    ) -> None:
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
        self.sample(self.begin_tick())

    def begin_tick(self) -> list[CgroupRef]:
        """Forget cgroups nobody read for long; the ones to sample for this step."""
        self._forget(time.monotonic())
        return list(self._entries)

    def sample(self, refs: list[CgroupRef]) -> None:
        for ref in refs:
            entry = self._entries.get(ref)
            if entry is None:
                continue
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

    def __len__(self) -> int:
        return len(self._entries)


# --- across processes: serving workers and the holder that samples ----------------------------------
#
# The sampler must not run on a serving path (a step over 1,000 cgroups reads thousands of /proc files), so
# with workers it runs in the holder (fs/connection.py), in chunks between its events:
# - workers send a cgroup they serve loadavg for over a datagram socket (its first read, then at most once
#   a minute: the sampler's idle clock; every RETRY_UNPUBLISHED while it is not in the table), and render
#   from a table in shared memory;
# - the sampler samples the registered cgroups every interval and publishes the table: two copies and an
#   index word, it fills the one not in use and then flips the index, so a reader never sees half a table.
# A cgroup not in the table yet (its first read, until the sampler publishes it) reads NOT_SAMPLED_YET.
TABLE_CAP = 2048  # >= 2 x max_cgroups: open addressing stays short
_ENTRY = struct.Struct("<QIIIII4x")  # key hash, avg1, avg5, avg15, running, total
TABLE_BYTES = 8 + 2 * TABLE_CAP * _ENTRY.size
TOUCH_EVERY = 60.0
# A cgroup still missing from the table this long after a worker registered it was dropped by the sampler
# (its cgroup was removed and made again, as a restarted container's is, or the sampler was full): register
# it again now, not after TOUCH_EVERY, or it reads NOT_SAMPLED_YET for up to a minute.
RETRY_UNPUBLISHED = 2.0


@functools.lru_cache(maxsize=4 * TABLE_CAP)
def key_hash(ref: CgroupRef) -> int:
    """The cgroup's key in the shared table (kept: every loadavg read and every publish asks)."""
    return int.from_bytes(blake2b(ref.key.encode(), digest_size=8).digest(), "little") or 1


def make_table() -> mmap.mmap:
    return mmap.mmap(-1, TABLE_BYTES, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


def publish(table: mmap.mmap, sampler: LoadSampler) -> None:
    active = struct.unpack_from("<I", table, 0)[0] & 1
    base = 8 + (1 - active) * TABLE_CAP * _ENTRY.size
    table[base : base + TABLE_CAP * _ENTRY.size] = bytes(TABLE_CAP * _ENTRY.size)
    for ref, entry in list(sampler._entries.items()):
        h = key_hash(ref)
        i = h % TABLE_CAP
        for _ in range(TABLE_CAP):
            if struct.unpack_from("<Q", table, base + i * _ENTRY.size)[0] == 0:
                _ENTRY.pack_into(table, base + i * _ENTRY.size, h, *entry.avg, entry.running, entry.total)
                break
            i = (i + 1) % TABLE_CAP
    struct.pack_into("<I", table, 0, 1 - active)


# What a worker answers for a cgroup the sampler has not published yet (its first read, for at most about
# PUBLISH_DELAY): no load yet, one task, as LXCFS answers for a cgroup it has not sampled. Counting the threads
# here instead put the sampler's work on the serving path, unbounded (a read per thread of the cgroup): it made
# every cgroup's first loadavg read 150-250 us slower, and the first pass after a start 10% slower at p99
# (bench/fleet.py --n 200).
NOT_SAMPLED_YET = ((0, 0, 0), 0, 1)


class SharedLoad:
    """A worker's loadavg source: the sampler process's table; same `get` as LoadSampler."""

    def __init__(self, table: mmap.mmap, sock: socket.socket) -> None:
        self.table = table
        self.sock = sock
        self._sent: dict[CgroupRef, float] = {}

    def _lookup(self, h: int) -> tuple[tuple[int, int, int], int, int] | None:
        active = struct.unpack_from("<I", self.table, 0)[0] & 1
        base = 8 + active * TABLE_CAP * _ENTRY.size
        i = h % TABLE_CAP
        for _ in range(TABLE_CAP):
            got = _ENTRY.unpack_from(self.table, base + i * _ENTRY.size)
            if got[0] == h:
                return (got[1], got[2], got[3]), got[4], got[5]
            if got[0] == 0:
                return None
            i = (i + 1) % TABLE_CAP
        return None

    def _register(self, ref: CgroupRef, now: float, published: bool) -> None:
        last = self._sent.get(ref)
        if last is not None and now - last < (TOUCH_EVERY if published else RETRY_UNPUBLISHED):
            return
        if len(self._sent) > 4 * TABLE_CAP:
            self._sent.clear()
        self._sent[ref] = now
        try:
            self.sock.send(json.dumps(ref.paths).encode())
        except OSError:  # the sampler is behind (full queue) or restarting: the next read registers again
            self._sent.pop(ref, None)

    def get(self, ref: CgroupRef) -> tuple[tuple[int, int, int], int, int] | None:
        found = self._lookup(key_hash(ref))
        self._register(ref, time.monotonic(), found is not None)
        return found if found is not None else NOT_SAMPLED_YET


class SamplerService:
    """The sampler as the holder runs it: `on_readable` takes registrations, `step` samples up to `CHUNK`
    cgroups (so a tick over 1,000 of them never keeps the holder from a dead worker for long) and publishes
    once a tick, or a registration, is complete."""

    CHUNK = 64
    # New cgroups (a node's containers starting, or serve restarting under them) arrive in bursts: their table
    # entries are published together, at most this often (until then a worker answers NOT_SAMPLED_YET).
    PUBLISH_DELAY = 0.25

    def __init__(self, reader: CgroupReader, table: mmap.mmap, sock: socket.socket, interval: float = INTERVAL) -> None:
        self.sampler = LoadSampler(reader)
        self.table = table
        self.sock = sock
        self.sock.setblocking(False)
        self.interval = interval
        self.next_tick = time.monotonic() + interval
        self._pending: list[CgroupRef] = []
        self._dirty = False
        self._publish_at = 0.0

    def fileno(self) -> int:
        return self.sock.fileno()

    def due(self) -> float:
        if self._pending:
            return 0.0
        return min(self._publish_at, self.next_tick) if self._dirty else self.next_tick

    def on_readable(self) -> None:
        for _ in range(256):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            try:
                ref = CgroupRef.compact((str(c), str(p)) for c, p in json.loads(data))
            except (ValueError, TypeError):
                continue
            if ref not in self.sampler._entries and not self._dirty:
                self._dirty = True
                self._publish_at = time.monotonic() + self.PUBLISH_DELAY
            self.sampler.get(ref)  # registers (sampling it at once) or refreshes its idle clock

    def step(self) -> None:
        now = time.monotonic()
        if not self._pending and now >= self.next_tick:
            self._pending = self.sampler.begin_tick()
            self.next_tick = max(self.next_tick + self.interval, now + self.interval / 2)
            if not self._pending:
                self._dirty, self._publish_at = True, now
        if self._pending:
            chunk, self._pending = self._pending[: self.CHUNK], self._pending[self.CHUNK :]
            self.sampler.sample(chunk)
            if self._pending:
                return
            self._dirty, self._publish_at = True, now  # a tick is complete: publish it now
        if self._dirty and now >= self._publish_at:
            publish(self.table, self.sampler)
            self._dirty = False
