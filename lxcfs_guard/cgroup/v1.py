"""cgroup v1: one hierarchy per controller (or per co-mounted group, e.g. "cpu,cpuacct") under the root.

Numbers follow LXCFS 5.0.3 so v1 output matches it line for line: the memory limit is the smallest
`memory.limit_in_bytes` from the cgroup up to the root; the cpuset is the cgroup's own. The CFS quota is the
tightest up the tree (cgroup/quota.py), as LXCFS 7.0 does and 5.0.3 did not (it read the cgroup's own only).
"""

from __future__ import annotations

import os
import sys

from lxcfs_guard.cgroup.base import (
    DEFAULT_ROOT,
    CgroupGone,
    ancestors,
    join,
    parse_cpu_list,
    parse_flat_keyed,
    read_int,
    read_text,
    strip_init_scope,
)
from lxcfs_guard.cgroup.facts import UNLIMITED_V1, CgroupRef, CpuFacts, CpuUsage, IoStat, MemoryFacts
from lxcfs_guard.cgroup.held import HeldFiles
from lxcfs_guard.cgroup.quota import quota_up_v1

_MEMSTAT_KEYS = (
    "cache",
    "rss",
    "rss_huge",
    "shmem",
    "mapped_file",
    "dirty",
    "writeback",
    "swap",
    "active_anon",
    "inactive_anon",
    "active_file",
    "inactive_file",
    "unevictable",
)
REFS_MAX = 4096  # /proc/PID/cgroup texts remembered with their parse (a few hundred bytes each)
# each key with its hierarchical total (what a view shows: the cgroup and its children)
_MEMSTAT_TOTALS = tuple((k, "total_" + k) for k in _MEMSTAT_KEYS)
# what memory() converts of memory.stat's 40-70 numbers (an int() each is a third of a microsecond)
_MEMSTAT_WANTED = (*(total for _, total in _MEMSTAT_TOTALS), "hierarchical_memory_limit", "hierarchical_memsw_limit")


def _limit(value: int | None) -> int | None:
    if value is None or value < 0 or value >= UNLIMITED_V1:
        return None
    return value


def _controller_names(hierarchy_id: str, field: str) -> tuple[str, ...]:
    """What one line of /proc/PID/cgroup names: its controllers ("cpu,cpuacct"), a named hierarchy
    ("name=systemd" -> "systemd"), or, for hierarchy 0 with none, the v2 hierarchy of a hybrid host
    ("unified", where the kernel keeps PSI per cgroup)."""
    if not field:
        return ("unified",) if hierarchy_id == "0" else ()
    return tuple(sys.intern(c[5:] if c.startswith("name=") else c) for c in field.split(","))


class V1Reader:
    """Reads v1 hierarchies below `root`. Which directory serves a controller is found once, from the
    directory names (co-mounted "cpu,cpuacct" and the usual "cpu"/"cpuacct" symlinks both work)."""

    version = 1

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root.rstrip("/") or "/"
        self.files = HeldFiles()  # the files every render reads, kept open (cgroup/held.py)
        self._dirs: dict[str, str] = {}
        self._absent: set[str] = set()  # blkio file names this kernel does not have
        self._refs: dict[str, CgroupRef] = {}  # /proc/PID/cgroup text -> its ref
        # a /proc/PID/cgroup line's controller field -> the names it stands for (a host has a dozen fields)
        self._controllers: dict[str, tuple[str, ...]] = {}
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            entries = []
        for name in entries:
            full = f"{self.root}/{name}"
            if not os.path.isdir(full):
                continue
            for ctrl in name.split(","):
                self._dirs.setdefault(ctrl, full)

    def controller_dir(self, controller: str) -> str | None:
        return self._dirs.get(controller)

    # -- where a process is -------------------------------------------------------------------------
    def parse_proc_cgroup(self, text: str) -> CgroupRef:
        paths: list[tuple[str, str]] = []
        controllers = self._controllers
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            names = controllers.get(parts[1])
            if names is None:
                if len(controllers) >= 256:  # hierarchies a host mounts are few; never let it grow
                    controllers.clear()
                names = controllers[parts[1]] = _controller_names(parts[0], parts[1])
            path = parts[2]
            if path.endswith("/init.scope"):
                path = strip_init_scope(path)
            for ctrl in names:
                paths.append((ctrl, path))
        paths.sort()
        return CgroupRef.compact(paths)

    def ref_for_pid(self, pid: int | str, proc: str = "/proc") -> CgroupRef:
        # a cgroup's name is bytes: keep any that are not UTF-8, so its files are found (not the host view)
        text = read_text(f"{proc}/{pid}/cgroup", "surrogateescape")
        if text is None:
            raise CgroupGone(pid)
        # The same few texts come back again and again (a container's every caller, each re-read once a
        # second): a parse is 13 lines of splitting, a lookup one hash of the text.
        ref = self._refs.get(text)
        if ref is None:
            if len(self._refs) >= REFS_MAX:
                self._refs.clear()
            ref = self._refs[text] = self.parse_proc_cgroup(text)
        return ref

    def _path(self, ref: CgroupRef, controller: str) -> str | None:
        base = self._dirs.get(controller)
        rel = ref.get(controller)
        if base is None or rel is None:
            return None
        return join(base, rel)

    def _min_up(self, ref: CgroupRef, controller: str, filename: str) -> int | None:
        base = self._dirs.get(controller)
        rel = ref.get(controller)
        if base is None or rel is None:
            return None
        best: int | None = None
        for anc in ancestors(rel):
            v = _limit(read_int(f"{join(base, anc)}/{filename}"))
            if v is not None and (best is None or v < best):
                best = v
        return best

    # -- facts ----------------------------------------------------------------------------------------
    def memory(self, ref: CgroupRef, swap: bool = True) -> MemoryFacts | None:
        """Without `swap`, the swap figures are left out (None) and their files not read."""
        path = self._path(ref, "memory")
        if path is None:
            return None
        usage = self.files.read_int(f"{path}/memory.usage_in_bytes")
        stat_text = self.files.read(f"{path}/memory.stat")
        if usage is None or stat_text is None:
            if not os.path.isdir(path):
                raise CgroupGone(path)
            return None
        raw = parse_flat_keyed(stat_text, _MEMSTAT_WANTED)
        if "total_cache" not in raw:  # no hierarchical totals (the kernel writes all of them or none)
            raw.update(parse_flat_keyed(stat_text, _MEMSTAT_KEYS))
        stat = {k: raw.get(total, raw.get(k, 0)) for k, total in _MEMSTAT_TOTALS}
        # memory.stat already carries the smallest limit up the tree (the kernel walks the ancestors for
        # hierarchical_*_limit): one file instead of one per level and kind
        hier = raw.get("hierarchical_memory_limit")
        limit = _limit(hier) if hier is not None else self._min_up(ref, "memory", "memory.limit_in_bytes")
        memsw_usage = self.files.read_int(f"{path}/memory.memsw.usage_in_bytes") if swap else None
        swap_limit = swap_usage = None
        accounting = memsw_usage is not None
        if memsw_usage is not None:
            hier = raw.get("hierarchical_memsw_limit")
            memsw_limit = (
                _limit(hier) if hier is not None else self._min_up(ref, "memory", "memory.memsw.limit_in_bytes")
            )
            if memsw_limit is not None and limit is not None:
                swap_limit = max(memsw_limit - limit, 0)
            swap_usage = max(memsw_usage - usage, 0)
        return MemoryFacts(
            limit=limit,
            usage=usage,
            stat=stat,
            swap_limit=swap_limit,
            swap_usage=swap_usage,
            swap_accounting=accounting,
            swappiness=self.files.read_int(f"{path}/memory.swappiness") if swap else None,
        )

    def cpu(self, ref: CgroupRef, quota: bool = True) -> CpuFacts | None:
        """The cpuset, and with `quota` the tightest CFS quota up the tree (a walk of every level: the
        cpuset view does not ask for it)."""
        cpus: tuple[int, ...] | None = None
        path = self._path(ref, "cpuset")
        if path is not None:
            text = self.files.read(f"{path}/cpuset.effective_cpus")
            if text is None:
                text = self.files.read(f"{path}/cpuset.cpus")
            if text is None and not os.path.isdir(path):
                raise CgroupGone(path)
            if text is not None and text.strip():
                cpus = parse_cpu_list(text)
        limit = period = None
        base, rel = self._dirs.get("cpu"), ref.get("cpu")
        if quota and base is not None and rel is not None:
            found = quota_up_v1(lambda anc: join(base, anc), rel)
            if found is not None:
                limit, period = found
        if cpus is None and limit is None:
            return None
        return CpuFacts(cpus=cpus, quota=limit, period=period)

    def cpu_usage(self, ref: CgroupRef) -> CpuUsage | None:
        path = self._path(ref, "cpuacct")
        if path is None:
            return None
        text = self.files.read(f"{path}/cpuacct.usage_all")
        if text is None:
            if not os.path.isdir(path):
                raise CgroupGone(path)
            return None
        return parse_usage_all(text)

    def cpu_time(self, ref: CgroupRef) -> int | None:
        """All CPU time of the cgroup in ns (cpuacct.usage: the precise counter; usage_all's columns are
        tick-sampled and may differ from it). Only uptime needs it, so /proc/stat does not pay for it."""
        path = self._path(ref, "cpuacct")
        if path is None:
            return None
        value = self.files.read_int(f"{path}/cpuacct.usage")
        if value is None and not os.path.isdir(path):
            raise CgroupGone(path)
        return value

    def io(self, ref: CgroupRef) -> dict[tuple[int, int], IoStat] | None:
        path = self._path(ref, "blkio")
        if path is None or ref.get("blkio") in ("/", ""):
            return None  # the root cgroup is the whole machine: the host's own diskstats say it best
        tables: dict[str, dict[tuple[int, int], dict[str, int]]] = {}
        found = False
        for name in (
            "blkio.io_service_bytes_recursive",
            "blkio.io_serviced_recursive",
            "blkio.io_merged_recursive",
            "blkio.io_service_time_recursive",
            "blkio.io_wait_time_recursive",
        ):
            text = self._read_known(path, name)
            if text is None:
                # cfq files are gone on blk-mq kernels: fall back to the throttle layer's counters
                alt = {
                    "blkio.io_service_bytes_recursive": "blkio.throttle.io_service_bytes_recursive",
                    "blkio.io_serviced_recursive": "blkio.throttle.io_serviced_recursive",
                }.get(name)
                text = self._read_known(path, alt) if alt else None
            if text is None:
                continue
            found = True
            tables[name] = _parse_blkio(text)
        if not found:
            if not os.path.isdir(path):
                raise CgroupGone(path)
            return None
        devices: set[tuple[int, int]] = set()
        for t in tables.values():
            devices.update(t)
        out: dict[tuple[int, int], IoStat] = {}
        for dev in devices:
            b = tables.get("blkio.io_service_bytes_recursive", {}).get(dev, {})
            n = tables.get("blkio.io_serviced_recursive", {}).get(dev, {})
            m = tables.get("blkio.io_merged_recursive", {}).get(dev, {})
            st = tables.get("blkio.io_service_time_recursive", {}).get(dev, {})
            wt = tables.get("blkio.io_wait_time_recursive", {}).get(dev, {})
            out[dev] = IoStat(
                rbytes=b.get("Read", 0),
                wbytes=b.get("Write", 0),
                dbytes=b.get("Discard", 0),
                rios=n.get("Read", 0),
                wios=n.get("Write", 0),
                dios=n.get("Discard", 0),
                rmerged=m.get("Read", 0),
                wmerged=m.get("Write", 0),
                rtime_ns=st.get("Read", 0),
                wtime_ns=st.get("Write", 0),
                rwait_ns=wt.get("Read", 0),
                wwait_ns=wt.get("Write", 0),
            )
        return out

    def _read_known(self, path: str, name: str) -> str | None:
        """read_text, but a file name found missing in an existing cgroup of this kernel (the cfq blkio
        files on blk-mq kernels) is not looked for again: a failed open per render is not free."""
        if name in self._absent:
            return None
        text = self.files.read(f"{path}/{name}")
        if text is None and os.path.isdir(path):
            self._absent.add(name)
        return text

    def procs(self, ref: CgroupRef) -> list[int] | None:
        for ctrl in ("cpu", "cpuacct", "pids", "memory", "cpuset"):
            path = self._path(ref, ctrl)
            if path is None:
                continue
            text = read_text(f"{path}/cgroup.procs")
            if text is None:
                raise CgroupGone(path)
            return [int(x) for x in text.split()]
        return None


def _parse_blkio(text: str) -> dict[tuple[int, int], dict[str, int]]:
    """ "8:0 Read 4096" lines -> {(8, 0): {"Read": 4096, ...}}; the trailing "Total N" line is skipped."""
    out: dict[tuple[int, int], dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[0]:
            continue
        try:
            major, minor = (int(x) for x in parts[0].split(":"))
            out.setdefault((major, minor), {})[parts[1]] = int(parts[2])
        except ValueError:
            continue
    return out


def parse_usage_all(text: str) -> CpuUsage:
    """cpuacct.usage_all ("cpu user system" then "N user_ns system_ns" per CPU) -> CpuUsage; lines that are
    not three numbers are skipped. The total is cpu_time()'s, its own file."""
    per_cpu: dict[int, tuple[int, int]] = {}
    user = system = 0
    for line in text.splitlines()[1:]:  # the header
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            try:
                u, s = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            per_cpu[int(parts[0])] = (u, s)
    for u, s in per_cpu.values():
        user += u
        system += s
    return CpuUsage(user=user, system=system, per_cpu=per_cpu)
