"""Whose view does a FUSE request get? LXCFS's answer: the cgroup of the init process of the caller's pid
namespace (minus a trailing /init.scope); the caller's own cgroup when it shares our pid namespace.

Every open asks this. First, the caller's pid namespace, never taken from a cache keyed by pid alone (a
reused pid must not inherit another container's view): the namespace of a living process never changes, so
it is remembered with a pidfd of the caller (a thread pidfd, Linux 6.9+: FUSE names the calling thread) and
served while that pidfd says the caller has not exited: one poll instead of a stat of /proc/PID/ns/pid (an
eighth of a worker's kernel time at 200 containers). A pid cannot be handed out again before its process
is reaped, so a caller whose pidfd is not readable is still the process the namespace was read for. Then:
- callers in a container: cached by pid-namespace inode. An inode number names one namespace only while
  that namespace lives: the kernel hands a dead namespace's number to the next new one at once. So every hit
  first checks that the namespace the entry was made for is still alive, i.e. that its init is still the
  same process: through a pidfd of the init (one poll, no /proc walk) or, without one, by the init's
  pid-namespace inode and start time. A living init pins its namespace, so its number cannot have been
  reused (and a held pidfd pins the namespace's number too: struct pid holds its namespace). Every `ttl`
  the init's cgroup is re-read; about once a second entries whose init exited are dropped, so pidfds
  never keep dead namespaces around for long.
- callers in the host pid namespace: their own cgroup, cached by pid for `ttl` while the pid is held by the
  same process.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import time
from dataclasses import dataclass

from lxcfs_guard.cgroup import CgroupGone, CgroupReader, CgroupRef
from lxcfs_guard.kernel import syscalls
from lxcfs_guard.kernel.procfs import ProcessGone, ns_inode, pid_start_time

MAX_ENTRIES = 4096
PIDFD_BUDGET = 2048  # pidfds held at most (one per cached container); beyond it the /proc check is used
CALLER_PIDFDS = 4096  # callers whose namespace is held (one pidfd each); beyond it the oldest is let go
PIDFD_THREAD = getattr(os, "PIDFD_THREAD", os.O_EXCL)  # a pidfd of any thread, not only a leader (6.9+)


@dataclass(frozen=True, slots=True)
class View:
    """The resolved caller: the cgroup to show and the init whose age is the container's uptime."""

    ref: CgroupRef
    init_pid: int
    init_start: int  # clock ticks since boot (field 22 of /proc/PID/stat)
    host: bool  # caller shares our pid namespace


class _NsEntry:
    """A cached container view and what proves it is still that container's: the init's pidfd (-1: none)."""

    __slots__ = ("expires", "view", "pidfd")

    def __init__(self, expires: float, view: View, pidfd: int) -> None:
        self.expires = expires
        self.view = view
        self.pidfd = pidfd


def _exited(pidfd: int) -> bool:
    """A pidfd turns readable when its process (its thread, for a thread pidfd) exits."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def _pidfd_share() -> int:
    """The fds all held pidfds (inits' and callers') may use: a quarter of the fd limit, raised to the hard
    limit if we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
        if want > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
            except (OSError, ValueError):
                pass
    return max(0, soft // 4 - 64)


class Resolver:
    def __init__(self, reader: CgroupReader, proc: str = "/proc", ttl: float = 1.0) -> None:
        self.reader = reader
        self.proc = proc
        self.ttl = ttl
        self.host_ns = ns_inode("self", "pid", proc)
        self._host_init_start: int | None = None  # pid 1's start time, read once
        self._by_ns: dict[int, _NsEntry] = {}
        self._by_pid: dict[int, tuple[float, View]] = {}
        # pidfds name processes of the real /proc only; a fixture tree (unit tests) uses the /proc check
        self._pidfds = 0
        self._poll = select.poll()  # every held pidfd, for the sweep
        self._ns_by_fd: dict[int, int] = {}
        self._next_sweep = 0.0
        share = _pidfd_share() if proc == "/proc" and hasattr(os, "pidfd_open") else 0
        self._pidfd_budget = min(PIDFD_BUDGET, share)
        # callers: pid -> (its pidfd, its pid-namespace inode), held while the pidfd says it lives
        self._callers: dict[int, tuple[int, int]] = {}
        self._caller_by_fd: dict[int, int] = {}
        self._caller_budget = max(0, min(CALLER_PIDFDS, share - self._pidfd_budget))
        self._pidfd_flags = PIDFD_THREAD

    def resolve(self, pid: int) -> View | None:
        """The caller's view, or None when it cannot be resolved (pid 0, process gone): serve the host."""
        if pid <= 0:
            return None
        now = time.monotonic()
        if (self._pidfds or self._callers) and now >= self._next_sweep:
            self._sweep(now)
        try:
            ns = self._caller_ns(pid)
        except (ProcessGone, OSError):
            return None
        try:
            if ns == self.host_ns:
                # Host callers see their own cgroup: cached by pid for `ttl` (a host process that moves
                # itself keeps its previous answer that long) and only while the pid is held by the same
                # process (see _caller_ns: a pid that changed hands starts afresh).
                hit = self._by_pid.get(pid)
                if hit is not None and hit[0] > now:
                    return hit[1]
                view = self._host_view(pid)
                self._store(self._by_pid, pid, now, view)
                return view
            entry = self._by_ns.get(ns)
            if entry is not None:
                if not self._same_init(entry, ns):
                    # the namespace this entry was made for died; `ns` is a new one with a reused number
                    self._drop(ns)
                    entry = None
                elif entry.expires > now:
                    return entry.view
            if entry is not None:  # same init, ttl over: re-read its cgroup
                old = entry.view
                entry.view = View(self.reader.ref_for_pid(old.init_pid, self.proc), old.init_pid, old.init_start, False)
                entry.expires = now + self.ttl
                return entry.view
            return self._new_container_view(pid, ns, now)
        except (CgroupGone, ProcessGone, OSError, ValueError):
            return None

    def _store(self, cache: dict, key: int, now: float, view: View) -> None:
        if len(cache) >= MAX_ENTRIES:
            for k in [k for k, (exp, _) in cache.items() if exp <= now] or list(cache):
                del cache[k]
        cache[key] = (now + self.ttl, view)

    # -- the caller's namespace ------------------------------------------------------------------------
    def _caller_ns(self, pid: int) -> int:
        """The pid-namespace inode of caller `pid`: held (see the module's docstring), or one stat."""
        held = self._callers.get(pid)
        if held is not None:
            if not _exited(held[0]):
                return held[1]
            self._forget_caller(pid)
        # Not held by a living process: what is cached for this pid may be a previous owner's
        self._by_pid.pop(pid, None)
        # The pidfd first, then the stat: if the pid changed hands in between, the pidfd is the dead
        # process's, and the entry is dropped at its first use, never served.
        pidfd = self._caller_pidfd(pid) if self._caller_budget else -1
        try:
            ns = ns_inode(pid, "pid", self.proc)
        except BaseException:
            if pidfd >= 0:
                os.close(pidfd)
            raise
        if pidfd >= 0:
            if len(self._callers) >= self._caller_budget:
                self._forget_caller(next(iter(self._callers)))  # the longest held
            self._callers[pid] = (pidfd, ns)
            self._caller_by_fd[pidfd] = pid
            self._poll.register(pidfd, select.POLLIN)
        return ns

    def _caller_pidfd(self, pid: int) -> int:
        try:
            return os.pidfd_open(pid, self._pidfd_flags)
        except OSError as e:
            if e.errno == errno.EINVAL and self._pidfd_flags:
                # before Linux 6.9 no thread pidfds: leaders are held, other threads stat every time
                self._pidfd_flags = 0
                return self._caller_pidfd(pid)
            return -1  # gone already, or out of fds: the stat decides, as without a pidfd

    def _forget_caller(self, pid: int) -> None:
        held = self._callers.pop(pid, None)
        if held is not None:
            self._poll.unregister(held[0])
            del self._caller_by_fd[held[0]]
            os.close(held[0])

    # -- container entries ----------------------------------------------------------------------------
    def _same_init(self, entry: _NsEntry, ns: int) -> bool:
        """Is the init this entry was made for still alive (then `ns` is still its namespace)?"""
        if entry.pidfd >= 0:
            return not _exited(entry.pidfd)
        init = entry.view.init_pid
        try:
            return ns_inode(init, "pid", self.proc) == ns and pid_start_time(init, self.proc) == entry.view.init_start
        except (ProcessGone, OSError, ValueError, IndexError):
            return False

    def _drop(self, ns: int) -> None:
        entry = self._by_ns.pop(ns, None)
        if entry is not None and entry.pidfd >= 0:
            self._poll.unregister(entry.pidfd)
            del self._ns_by_fd[entry.pidfd]
            os.close(entry.pidfd)
            self._pidfds -= 1

    def _sweep(self, now: float) -> None:
        """Drop the entries whose init or caller exited (one poll over all pidfds), closing their pidfds."""
        self._next_sweep = now + 1.0
        for fd, _ in self._poll.poll(0):
            ns = self._ns_by_fd.get(fd)
            if ns is not None:
                self._drop(ns)
            elif fd in self._caller_by_fd:
                self._forget_caller(self._caller_by_fd[fd])

    def _new_container_view(self, pid: int, ns: int, now: float) -> View | None:
        init = self._find_init(pid, ns)
        if init is None:
            return None
        pidfd = -1
        if self._pidfds < self._pidfd_budget:
            try:
                pidfd = os.pidfd_open(init)
            except OSError:
                pidfd = -1
        try:
            # read after the pidfd is open, so the identity checked is the pidfd's process
            start = pid_start_time(init, self.proc)
            if ns_inode(init, "pid", self.proc) != ns:
                raise ProcessGone(init)  # the init died and its pid went elsewhere meanwhile
            ref = self.reader.ref_for_pid(init, self.proc)
        except BaseException:
            if pidfd >= 0:
                os.close(pidfd)
            raise
        view = View(ref=ref, init_pid=init, init_start=start, host=False)
        if len(self._by_ns) >= MAX_ENTRIES:
            stale = [k for k, e in self._by_ns.items() if e.expires <= now] or list(self._by_ns)
            for k in stale:
                self._drop(k)
        self._drop(ns)
        self._by_ns[ns] = _NsEntry(now + self.ttl, view, pidfd)
        if pidfd >= 0:
            self._pidfds += 1
            self._poll.register(pidfd, select.POLLIN)
            self._ns_by_fd[pidfd] = ns
        return view

    def _host_view(self, pid: int) -> View:
        if self._host_init_start is None:
            try:
                self._host_init_start = pid_start_time(1, self.proc)
            except (ProcessGone, OSError):
                self._host_init_start = 0  # an unreadable pid 1 (some sandboxes): its age is the machine's uptime
        ref = self.reader.ref_for_pid(pid, self.proc)
        return View(ref=ref, init_pid=1, init_start=self._host_init_start, host=True)

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
