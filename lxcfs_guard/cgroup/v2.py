"""cgroup v2: one unified hierarchy. Limits that say `max` inherit from above, so the effective memory and
swap limits are the smallest numbers found walking up to the root.

Where LXCFS 5.0.3 shows the host on v2 (/proc/stat: #593, /proc/diskstats: #653) we have cpu.stat and
io.stat to show the cgroup's own; memory.stat's `file_mapped` gives Mapped (LXCFS prints 0).
"""

from __future__ import annotations

import os

from lxcfs_guard.cgroup.base import (
    DEFAULT_ROOT,
    CgroupGone,
    ancestors,
    join,
    parse_cpu_list,
    parse_flat_keyed,
    read_text,
    strip_init_scope,
)
from lxcfs_guard.cgroup.facts import CgroupRef, CpuFacts, CpuUsage, IoStat, MemoryFacts
from lxcfs_guard.cgroup.held import HeldFiles
from lxcfs_guard.cgroup.quota import quota_up_v2

# v2 memory.stat name -> the v1 name the views use
_MEMSTAT_MAP = {
    "file": "cache",
    "anon": "rss",
    "anon_thp": "rss_huge",
    "shmem": "shmem",
    "file_mapped": "mapped_file",
    "file_dirty": "dirty",
    "file_writeback": "writeback",
    "active_anon": "active_anon",
    "inactive_anon": "inactive_anon",
    "active_file": "active_file",
    "inactive_file": "inactive_file",
    "unevictable": "unevictable",
    "slab_reclaimable": "slab_reclaimable",
    "slab_unreclaimable": "slab_unreclaimable",
    "kernel_stack": "kernel_stack",
    "pagetables": "pagetables",
    "shmem_thp": "shmem_thp",
    "file_thp": "file_thp",
}
_MEMSTAT_WANTED = (*_MEMSTAT_MAP, "zswap", "zswapped")  # what memory() reads of memory.stat's 50-70 numbers


class V2Reader:
    version = 2

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root.rstrip("/") or "/"
        self.files = HeldFiles()  # the files every render reads, kept open (cgroup/held.py)

    def parse_proc_cgroup(self, text: str) -> CgroupRef:
        for line in text.splitlines():
            if line.startswith("0::"):
                return CgroupRef((("", strip_init_scope(line[3:].strip() or "/")),))
        return CgroupRef(())

    def ref_for_pid(self, pid: int | str, proc: str = "/proc") -> CgroupRef:
        # a cgroup's name is bytes: keep any that are not UTF-8, so its files are found (not the host view)
        text = read_text(f"{proc}/{pid}/cgroup", "surrogateescape")
        if text is None:
            raise CgroupGone(pid)
        return self.parse_proc_cgroup(text)

    def _path(self, ref: CgroupRef) -> str | None:
        rel = ref.get("")
        return None if rel is None else join(self.root, rel)

    def _min_up(self, ref: CgroupRef, filename: str) -> int | None:
        rel = ref.get("")
        if rel is None:
            return None
        best: int | None = None
        for anc in ancestors(rel):
            v = self.files.read_int(f"{join(self.root, anc)}/{filename}")
            if v is not None and v >= 0 and (best is None or v < best):
                best = v
        return best

    def _raise_if_gone(self, path: str) -> None:
        """An unreadable file means no figures (the caller returns None), unless the cgroup itself went away."""
        if not os.path.isdir(path):
            raise CgroupGone(path)

    def memory(self, ref: CgroupRef, swap: bool = True) -> MemoryFacts | None:
        """Without `swap`, the swap figures are left out (None) and their files not read."""
        path = self._path(ref)
        if path is None:
            return None
        usage = self.files.read_int(f"{path}/memory.current")
        stat_text = self.files.read(f"{path}/memory.stat")
        if usage is None or stat_text is None:
            self._raise_if_gone(path)
            return None
        raw = parse_flat_keyed(stat_text, _MEMSTAT_WANTED)
        stat = {v1: raw.get(v2, 0) for v2, v1 in _MEMSTAT_MAP.items()}
        swap_usage = self.files.read_int(f"{path}/memory.swap.current") if swap else None
        accounting = swap_usage is not None
        return MemoryFacts(
            limit=self._min_up(ref, "memory.max"),
            usage=usage,
            stat=stat,
            swap_limit=self._min_up(ref, "memory.swap.max") if accounting else None,
            swap_usage=swap_usage,
            swap_accounting=accounting,
            swappiness=None,
            high=self._min_up(ref, "memory.high"),
            zswap=raw.get("zswap"),
            zswapped=raw.get("zswapped"),
        )

    def cpu(self, ref: CgroupRef, quota: bool = True) -> CpuFacts | None:
        path = self._path(ref)
        if path is None:
            return None
        cpus: tuple[int, ...] | None = None
        text = self.files.read(f"{path}/cpuset.cpus.effective")
        if text is not None and text.strip():
            cpus = parse_cpu_list(text)
        limit = period = None
        found = quota_up_v2(lambda anc: join(self.root, anc), ref.get("") or "/") if quota else None
        if found is not None:
            limit, period = found
        if cpus is None and limit is None:
            self._raise_if_gone(path)
            return None
        return CpuFacts(cpus=cpus, quota=limit, period=period)

    def cpu_usage(self, ref: CgroupRef) -> CpuUsage | None:
        path = self._path(ref)
        if path is None:
            return None
        text = self.files.read(f"{path}/cpu.stat")
        if text is None:
            self._raise_if_gone(path)
            return None
        raw = parse_flat_keyed(text)
        if "user_usec" not in raw:
            return None
        return CpuUsage(
            user=raw.get("user_usec", 0) * 1000,
            system=raw.get("system_usec", 0) * 1000,
            total=raw["usage_usec"] * 1000 if "usage_usec" in raw else None,
        )

    def cpu_time(self, ref: CgroupRef) -> int | None:
        usage = self.cpu_usage(ref)
        return None if usage is None else usage.total

    def io(self, ref: CgroupRef) -> dict[tuple[int, int], IoStat] | None:
        path = self._path(ref)
        if path is None:
            return None
        text = self.files.read(f"{path}/io.stat")
        if text is None:
            self._raise_if_gone(path)
            return None
        return parse_io_stat(text)

    def procs(self, ref: CgroupRef) -> list[int] | None:
        path = self._path(ref)
        if path is None:
            return None
        text = read_text(f"{path}/cgroup.procs")
        if text is None:
            raise CgroupGone(path)
        return [int(x) for x in text.split()]


def parse_io_stat(text: str) -> dict[tuple[int, int], IoStat]:
    """io.stat lines "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0" -> {(8, 0): IoStat}."""
    out: dict[tuple[int, int], IoStat] = {}
    fields = {"rbytes", "wbytes", "rios", "wios", "dbytes", "dios"}
    for line in text.splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        try:
            major, minor = (int(x) for x in parts[0].split(":"))
        except ValueError:
            continue
        kv: dict[str, int] = {}
        for item in parts[1:]:
            k, _, v = item.partition("=")
            if k in fields:
                try:  # noqa: SIM105 - once per field of io.stat on each render: suppress() costs more
                    kv[k] = int(v)
                except ValueError:
                    pass
        out[(major, minor)] = IoStat(**kv)
    return out
