"""What a view needs to know about a cgroup, as plain data, the same shape for cgroup v1 and v2.

The readers (v1.py, v2.py) translate each hierarchy's files into these; the views only ever see these,
so a view is a pure function that unit tests can feed by hand.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

# v1 reports "no limit" as a page-rounded LONG_MAX; anything at or above this is unlimited.
UNLIMITED_V1 = 0x7FFFFFFFFFFFF000


@dataclass(frozen=True, slots=True)
class CgroupRef:
    """Where a process sits: controller -> path relative to that hierarchy's root ("" key on v2).

    Hashable, so caches can key on it; `key` is a short stable string for logs and cache names."""

    paths: tuple[tuple[str, str], ...]
    # every cache lookup hashes the ref (a dozen pairs on v1): computed once, as str does for itself
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self.paths))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def compact(cls, pairs: Iterable[tuple[str, str]]) -> CgroupRef:
        """A ref from (controller, path) pairs whose controllers share one string per distinct path, the
        names interned: a busy node keeps thousands of refs (per caller, per sampled cgroup), each naming
        the same path for a dozen v1 controllers."""
        same: dict[str, str] = {}
        intern, share = sys.intern, same.setdefault
        return cls(tuple([(intern(c), share(p, p)) for c, p in pairs]))

    def get(self, controller: str) -> str | None:
        for ctrl, path in self.paths:
            if ctrl == controller:
                return path
        return None

    @property
    def key(self) -> str:
        return ";".join(f"{c}:{p}" for c, p in self.paths)


@dataclass(frozen=True, slots=True)
class MemoryFacts:
    """Memory of a cgroup, in bytes. `limit` is the effective one (smallest up the tree), None = no limit.

    `stat` uses v1's `total_*` names without the prefix, whatever the hierarchy: cache, rss, rss_huge,
    shmem, mapped_file, dirty, writeback, active_anon, inactive_anon, active_file, inactive_file,
    unevictable, plus slab_reclaimable / slab_unreclaimable where the kernel reports them (v2).
    Swap is swap only (v1's memsw minus memory): `swap_limit` None = unknown or unlimited."""

    limit: int | None
    usage: int
    stat: dict[str, int] = field(default_factory=dict)
    swap_limit: int | None = None
    swap_usage: int | None = None
    swap_accounting: bool = False
    swappiness: int | None = None
    # v2 only: the smallest memory.high up the tree (None = none set), and memory.stat's zswap (compressed
    # pool bytes) / zswapped (bytes of pages stored there); None where the kernel keeps no such figures (v1)
    high: int | None = None
    zswap: int | None = None
    zswapped: int | None = None


@dataclass(frozen=True, slots=True)
class CpuFacts:
    """CPUs a cgroup may use. `cpus` is the effective cpuset (sorted host CPU numbers), None = unknown
    (use the host's); `quota`/`period` in microseconds, quota None = unlimited."""

    cpus: tuple[int, ...] | None
    quota: int | None = None
    period: int | None = None


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """CPU time a cgroup used, in nanoseconds. v1 (cpuacct.usage_all) gives it per CPU: `per_cpu` maps
    host CPU -> (user, system). v2 (cpu.stat) only has totals: `per_cpu` is empty."""

    user: int
    system: int
    per_cpu: dict[int, tuple[int, int]] = field(default_factory=dict)
    total: int | None = None  # all CPU time (v1 cpuacct.usage, v2 usage_usec); may exceed user + system


@dataclass(frozen=True, slots=True)
class IoStat:
    """Per block device (major, minor) counters of a cgroup: bytes and operations read/written
    (v1 blkio *_recursive, v2 io.stat), plus v1's service/wait times in nanoseconds where known."""

    rbytes: int = 0
    wbytes: int = 0
    rios: int = 0
    wios: int = 0
    dbytes: int = 0
    dios: int = 0
    rtime_ns: int = 0
    wtime_ns: int = 0
    rwait_ns: int = 0
    wwait_ns: int = 0
    rmerged: int = 0
    wmerged: int = 0
