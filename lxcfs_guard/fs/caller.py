"""Whose view does a FUSE request get? LXCFS's answer: the cgroup of the init process of the caller's pid
namespace (minus a trailing /init.scope); the caller's own cgroup when it shares our pid namespace.

Every open asks this. Each call costs one stat of /proc/PID/ns/pid (never skipped: a reused pid must not
inherit another container's view), and then:
- callers in a container: cached by pid-namespace inode, so any process of a known container costs that
  one stat. A live namespace's inode names exactly one namespace; every `ttl` the cached init
  is re-checked (its own ns inode must still match) and its cgroup re-read.
- callers in the host pid namespace: their own cgroup, cached by pid for `ttl`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from lxcfs_guard.cgroup import CgroupGone, CgroupReader, CgroupRef
from lxcfs_guard.kernel import syscalls
from lxcfs_guard.kernel.procfs import ProcessGone, ns_inode, pid_start_time

MAX_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class View:
    """The resolved caller: the cgroup to show and the init whose age is the container's uptime."""

    ref: CgroupRef
    init_pid: int
    init_start: int  # clock ticks since boot (field 22 of /proc/PID/stat)
    host: bool  # caller shares our pid namespace


class Resolver:
    def __init__(self, reader: CgroupReader, proc: str = "/proc", ttl: float = 1.0) -> None:
        self.reader = reader
        self.proc = proc
        self.ttl = ttl
        self.host_ns = ns_inode("self", "pid", proc)
        self._host_init_start: int | None = None  # pid 1's start time, read once
        self._by_ns: dict[int, tuple[float, View]] = {}
        self._by_pid: dict[int, tuple[float, View]] = {}

    def resolve(self, pid: int) -> View | None:
        """The caller's view, or None when it cannot be resolved (pid 0, process gone): serve the host."""
        if pid <= 0:
            return None
        now = time.monotonic()
        # Always one stat of the caller's pid-namespace link: a pid can be reused by a process of another
        # container at any moment, and the namespace is what decides whose view it gets, so it is never
        # taken from a cache keyed by pid alone.
        try:
            ns = ns_inode(pid, "pid", self.proc)
        except (ProcessGone, OSError):
            return None
        try:
            if ns == self.host_ns:
                # Host callers see their own cgroup: cached by pid for `ttl` (a host pid reused within
                # `ttl`, or a host process that moves itself, keeps the previous host-side answer briefly).
                hit = self._by_pid.get(pid)
                if hit is not None and hit[0] > now:
                    return hit[1]
                view = self._host_view(pid)
                self._store(self._by_pid, pid, now, view)
                return view
            nshit = self._by_ns.get(ns)
            if nshit is not None and nshit[0] > now:
                return nshit[1]
            view = self._container_view(pid, ns, nshit[1] if nshit else None)
            if view is not None:
                self._store(self._by_ns, ns, now, view)
            return view
        except (CgroupGone, ProcessGone, OSError, ValueError):
            return None

    def _store(self, cache: dict, key: int, now: float, view: View) -> None:
        if len(cache) >= MAX_ENTRIES:
            for k in [k for k, (exp, _) in cache.items() if exp <= now] or list(cache):
                del cache[k]
        cache[key] = (now + self.ttl, view)

    def _host_view(self, pid: int) -> View:
        if self._host_init_start is None:
            try:
                self._host_init_start = pid_start_time(1, self.proc)
            except (ProcessGone, OSError):
                self._host_init_start = 0  # an unreadable pid 1 (some sandboxes): its age is the machine's uptime
        ref = self.reader.ref_for_pid(pid, self.proc)
        return View(ref=ref, init_pid=1, init_start=self._host_init_start, host=True)

    def _container_view(self, pid: int, ns: int, old: View | None) -> View | None:
        init = None
        if old is not None and self._same_ns(old.init_pid, ns):
            init = old.init_pid
        if init is None:
            init = self._find_init(pid, ns)
        if init is None:
            return None
        start = pid_start_time(init, self.proc)
        ref = self.reader.ref_for_pid(init, self.proc)
        return View(ref=ref, init_pid=init, init_start=start, host=False)

    def _same_ns(self, pid: int, ns: int) -> bool:
        try:
            return ns_inode(pid, "pid", self.proc) == ns
        except (ProcessGone, OSError):
            return False

    def _find_init(self, pid: int, ns: int) -> int | None:
        try:
            fd = os.open(f"{self.proc}/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            init = syscalls.pidns_init_pid(fd)
            if init > 0:
                return init
        except OSError:
            pass
        finally:
            os.close(fd)
        return self._scan_for_init(ns)

    def _scan_for_init(self, ns: int) -> int | None:
        """Older kernels: the process of namespace `ns` whose innermost pid (last NSpid field) is 1."""
        for name in os.listdir(self.proc):
            if not name.isdigit() or not self._same_ns(int(name), ns):
                continue
            try:
                with open(f"{self.proc}/{name}/status") as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            if line.split()[-1] == "1":
                                return int(name)
                            break
            except OSError:
                continue
        return None
