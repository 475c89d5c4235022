"""What a file says to a given caller: gathers host text and cgroup facts, calls the pure view, and
caches the bytes for a short TTL per (file, cgroup), so a burst of reads from one container costs one
render. Any failure (missing controller, vanished cgroup, odd host text) yields the host's file: a
reader always gets an answer, never an error from us.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable

from lxcfs_guard import config
from lxcfs_guard.cgroup import CgroupGone, CgroupReader
from lxcfs_guard.cgroup.base import parse_cpu_list, read_text
from lxcfs_guard.cgroup.pressure import RESOURCES, pressure_file
from lxcfs_guard.fs.caller import View
from lxcfs_guard.fs.loadavg import LoadSource
from lxcfs_guard.fs.views import cpuinfo, cpuonline, cpus, diskstats, loadavg, meminfo, pressure, stat, swaps, uptime

log = logging.getLogger(__name__)

# Each file's host original sits at the same path from / (proc/meminfo -> /proc/meminfo).
HOST_PATHS = {name: config.target_for(name) for name in config.ALL_FILES}
# Host files are the same for every cgroup: each is read once per tick and shared by every render in it
# (on a busy node thousands of renders a second would otherwise each read /proc/meminfo, /proc/stat ...).
HOST_TICK = 0.1
# Host files that do not change while we run (or whose changes do not matter for a few seconds).
SLOW_HOST_TTL = {"/proc/cpuinfo": 10.0, "/sys/devices/system/cpu/online": 1.0}
CACHE_MAX = 8192
# a view that cannot be made from what a cgroup has (gone meanwhile, a file this kernel lacks, odd content)
_SERVE_HOST_ON = (CgroupGone, OSError, ValueError, KeyError, IndexError, ZeroDivisionError)
PRUNE_EVERY = 0.25  # seconds between sweeps of expired cache entries


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


class Content:
    def __init__(
        self,
        reader: CgroupReader,
        cpu_view: str = "cpuset",
        ttl: float = 0.1,
        sampler: LoadSource | None = None,
        host_paths: dict[str, str] | None = None,
        host_tick: float = HOST_TICK,
        meminfo_options: meminfo.MeminfoOptions = meminfo.DEFAULT_OPTIONS,
    ) -> None:
        self.reader = reader
        self.cpu_view = cpu_view
        self.ttl = ttl
        self.sampler = sampler
        self.host_paths = host_paths or HOST_PATHS
        self.host_tick = host_tick
        self._reaper: tuple[float, int, object] | None = None
        self._cpus_cache: dict[object, tuple[float, tuple[int, ...]]] = {}
        self._next_prune = 0.0
        self._online: tuple[str | None, tuple[int, ...]] = (None, ())
        self._cpuinfo_memo: tuple[str | None, dict[tuple[int, ...], str]] = (None, {})
        self.meminfo_options = meminfo_options
        self._cache: dict[tuple[str, object], tuple[float, bytes]] = {}
        self._host_cache: dict[str, tuple[float, str]] = {}
        self._ticks = clock_ticks()
        self._renderers: dict[str, Callable[[View], str | None]] = {
            "proc/meminfo": self._meminfo,
            "proc/cpuinfo": self._cpuinfo,
            "proc/stat": self._stat,
            "proc/swaps": self._swaps,
            "proc/uptime": self._uptime,
            "proc/loadavg": self._loadavg,
            "proc/diskstats": self._diskstats,
            "proc/slabinfo": self._slabinfo,
            "sys/devices/system/cpu/online": self._cpu_online,
        }
        self._renderers.update({f"proc/pressure/{r}": functools.partial(self._pressure, r) for r in RESOURCES})

    # -- entry point ----------------------------------------------------------------------------------
    def render(self, name: str, view: View | None) -> bytes:
        if view is None:
            return self.host_bytes(name)
        key = (name, view.init_pid if name == "proc/uptime" else view.ref)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            text = self._renderers[name](view)
        except _SERVE_HOST_ON as e:
            log.debug("%s for %s: %r; serving the host file", name, view.ref.key, e)
            text = None
        except Exception:  # a bug in a view must not take the filesystem down
            log.exception("rendering %s failed; serving the host file", name)
            text = None
        data = self.host_bytes(name) if text is None else text.encode()
        if self.ttl > 0:
            if now >= self._next_prune:
                # On a busy node almost every render is a miss whose entry is never read again: drop the
                # expired ones a few times a second, or thousands of dead renders stay resident.
                self._next_prune = now + PRUNE_EVERY
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                self._cpus_cache = {k: v for k, v in self._cpus_cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
            self._cache[key] = (now + self.ttl, data)
        return data

    def warm(self, view: View, times: int = 12) -> None:
        """Render every file for `view` a few times and keep nothing: the holder does this before it forks its
        workers. CPython specializes a function's bytecode in place over its first calls, and fills the
        memos a render uses (parsed /proc/PID/cgroup texts, cpuinfo blocks, absent blkio files); a worker
        forked afterwards inherits all of it. Without it every new worker, a replacement for a killed one too,
        did that work on its first requests and copied a page at each first write into shared bytecode.
        loadavg would register the holder's cgroup with the sampler, and the pressure files have no
        renders worth warming: both are left out."""
        renders = [r for name, r in self._renderers.items() if name != "proc/loadavg" and "pressure" not in name]
        for _ in range(times):
            for render in renders:
                with contextlib.suppress(*_SERVE_HOST_ON):  # render() serves the host file for these
                    render(view)

    def host_text(self, path: str) -> str:
        now = time.monotonic()
        hit = self._host_cache.get(path)
        if hit is not None and hit[0] > now:
            return hit[1]
        text = read_text(path, one_record=False) or ""  # once a tick, and cpuinfo/diskstats are many records
        self._host_cache[path] = (now + SLOW_HOST_TTL.get(path, self.host_tick), text)
        return text

    def size_bound(self, name: str) -> int:
        """An st_size no caller's rendering of `name` exceeds: a view never has more lines than the host
        file and its numbers are at most a few digits longer, so twice the host file, page-rounded."""
        return (2 * len(self.host_bytes(name)) + 8191) // 4096 * 4096

    def host_bytes(self, name: str) -> bytes:
        try:
            return self.host_text(self.host_paths[name]).encode()
        except OSError:
            return b""

    # -- per file -----------------------------------------------------------------------------------
    def _meminfo(self, view: View) -> str | None:
        host = self.host_text(self.host_paths["proc/meminfo"])
        mem = self.reader.memory(view.ref, swap=meminfo.host_has_swap(host))
        if mem is None:
            return None
        return meminfo.render_meminfo(host, mem, self.meminfo_options)

    def _swaps(self, view: View) -> str | None:
        host = self.host_text(self.host_paths["proc/meminfo"])
        mem = self.reader.memory(view.ref, swap=meminfo.host_has_swap(host))
        if mem is None:
            return None
        total, used = meminfo.swap_numbers(host, mem, self.meminfo_options)
        return swaps.render_swaps(total, used)

    def _visible_cpus(self, view: View) -> tuple[int, ...]:
        """The cgroup's CPUs, kept for a host tick: an agent reading stat, cpuinfo and cpu/online in a row
        reads the cpuset and quota files once (keyed by the cgroup: never shared between two)."""
        now = time.monotonic()
        hit = self._cpus_cache.get(view.ref)
        if hit is not None and hit[0] > now:
            return hit[1]
        text = self.host_text(self.host_paths["sys/devices/system/cpu/online"])
        if self._online[0] is not text:
            self._online = (text, parse_cpu_list(text))
        shown = cpus.visible_cpus(
            self._online[1], self.reader.cpu(view.ref, quota=self.cpu_view == "quota"), self.cpu_view
        )
        if len(self._cpus_cache) >= CACHE_MAX:
            self._cpus_cache = {k: v for k, v in self._cpus_cache.items() if v[0] > now}
            if len(self._cpus_cache) >= CACHE_MAX:
                self._cpus_cache.clear()
        self._cpus_cache[view.ref] = (now + self.host_tick, shown)
        return shown

    def visible_cpus(self, view: View) -> tuple[int, ...]:  # for sysfs_cpu: the cpu directory agrees with online
        return self._visible_cpus(view)

    def online_bytes(self, view: View) -> bytes:
        return self.render(config.CPU_ONLINE, view)

    def _cpuinfo(self, view: View) -> str | None:
        # a pure function of (host cpuinfo, visible CPUs): cgroups with the same cpuset share the text
        host = self.host_text(self.host_paths["proc/cpuinfo"])
        shown = self._visible_cpus(view)
        if self._cpuinfo_memo[0] is not host:
            self._cpuinfo_memo = (host, {})
        memo = self._cpuinfo_memo[1]
        text = memo.get(shown)
        if text is None:
            if len(memo) >= 64:
                memo.clear()
            text = memo[shown] = cpuinfo.render_cpuinfo(host, shown)
        return text

    def _cpu_online(self, view: View) -> str | None:
        shown = self._visible_cpus(view)
        if self.cpu_view == "quota":
            return cpuonline.render_cpu_online_count(len(shown))
        return cpuonline.render_cpu_online(shown)

    def _stat(self, view: View) -> str | None:
        usage = self.reader.cpu_usage(view.ref)
        if usage is None:
            return None
        host = self.host_text(self.host_paths["proc/stat"])
        return stat.render_stat(host, self._visible_cpus(view), usage, renumber=self.cpu_view == "quota")

    def _uptime(self, view: View) -> str | None:
        host = self.host_text(self.host_paths["proc/uptime"])
        now = float(host.split()[0])
        age = now - view.init_start / self._ticks
        busy = 0.0
        try:
            # the reaper's cgroup (for the host pid namespace that is pid 1's, i.e. the whole machine)
            ref = view.ref if not view.host else self._host_reaper_ref(view.init_pid)
            total = self.reader.cpu_time(ref)
            if total is None:
                usage = self.reader.cpu_usage(ref)
                total = None if usage is None else usage.user + usage.system
            if total is not None:
                busy = total / 1e9
        except (CgroupGone, OSError):
            pass
        return uptime.render_uptime(age, busy)

    def _host_reaper_ref(self, pid: int):
        """The cgroup of the host's init, re-read once per host tick (every host caller's uptime asks)."""
        now = time.monotonic()
        hit = self._reaper
        if hit is None or hit[0] <= now or hit[1] != pid:
            hit = self._reaper = (now + self.host_tick, pid, self.reader.ref_for_pid(pid))
        return hit[2]

    def _loadavg(self, view: View) -> str | None:
        if self.sampler is None:
            return None
        sample = self.sampler.get(view.ref)
        if sample is None:
            return None
        avg, running, total = sample
        last_pid = loadavg.host_last_pid(self.host_text(self.host_paths["proc/loadavg"]))
        return loadavg.render_loadavg(avg, running, total, last_pid)

    def _diskstats(self, view: View) -> str | None:
        io = self.reader.io(view.ref)
        if io is None:
            return None
        return diskstats.render_diskstats(self.host_text(self.host_paths["proc/diskstats"]), io)

    def _pressure(self, resource: str, view: View) -> str | None:
        return pressure.render_pressure(read_text(pressure_file(self.reader, view.ref, resource)))

    def _slabinfo(self, view: View) -> str | None:
        # v1 kernels before 5.9 had a per-cgroup memory.kmem.slabinfo; newer ones leave it empty: host file.
        path = getattr(self.reader, "controller_dir", lambda c: None)("memory")
        rel = view.ref.get("memory")
        if path and rel:
            text = read_text(f"{path}/{rel.strip('/')}/memory.kmem.slabinfo".replace("//", "/"), one_record=False)
            if text and text.strip():
                return text
        return None
