"""PSI triggers through proc/pressure/{cpu,io,memory}: write() registers one on the caller's cgroup file,
poll() waits for it, as on the kernel's own /proc/pressure (LXCFS 7.0's --enable-psi-poll).

The kernel's rules, which a container must see unchanged: one trigger per open file (a second write is
EBUSY); `some|full THRESHOLD_US WINDOW_US` with 0 < threshold <= window <= 10 s, anything else EINVAL; an
opener without CAP_SYS_RESOURCE may only use windows that are multiples of 2 s (we write as root, so that
rule is applied here, from the opener's capabilities); poll() always reports the default mask, plus POLLPRI
once per event, and POLLERR|POLLPRI when no trigger is set or the source is gone. A POLL answered ENOSYS would
make the kernel stop asking for the whole connection (LXCFS #726): every file answers poll, regular ones with
the default mask.

One epoll instance holds every trigger fd of this process (EPOLLPRI, one-shot, re-armed after each event);
one thread blocks in epoll_wait on it and, under the lock every entry point takes, marks the open file's
event pending and wakes the poller through the FUSE poll handle it left. The kernel consumes a PSI event
whenever anyone polls the fd, so the epoll instance is waited on directly, never nested inside an event
event loop's (the outer poll of the inner one would eat the event); and "pending" keeps an event that fired while
nobody was polling.

Several worker processes (the multi-worker daemon): a trigger fd is process-local, but WRITE and a later
POLL of one open file may reach different workers. What an open file needs is kept in a `PressureSpec` in a
`SpecStore` (the resolved pressure file, whether the opener was privileged, the validated trigger text, the
pending flag and a serial that tells a reused fh from the old one), so that a worker polled for an fh whose
trigger it does not hold can create its own from the spec. The store is per process today (`LocalStore`),
so `serve --enable-psi-poll` runs one worker (fs/daemon.py); a store in the shared arena lifts that.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import select
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import pyfuse3

from lxcfs_guard import config
from lxcfs_guard.cgroup.base import CgroupReader, read_text
from lxcfs_guard.cgroup.facts import CgroupRef
from lxcfs_guard.cgroup.pressure import HOST_PRESSURE, pressure_file
from lxcfs_guard.fs.views.pressure import render_pressure

log = logging.getLogger(__name__)

DEFAULT_POLLMASK = select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM
NO_TRIGGER_MASK = DEFAULT_POLLMASK | select.POLLERR | select.POLLPRI
WINDOW_MAX_US = 10_000_000
UNPRIVILEGED_WINDOW_STEP_US = 2_000_000
CAP_SYS_RESOURCE = 24
SWEEP_INTERVAL = 5.0
MOCK_ENV = "LXCFS_GUARD_PSI_MOCK_EVENTS"  # tests only, see README: fire armed triggers every N s
_TRIGGER = re.compile(rb"\s*(some|full)\s+(\d+)\s+(\d+)")
_U32 = 2**32


@dataclass(slots=True)
class PressureSpec:
    """Everything an open pressure file carries between requests, in whichever worker they land."""

    resource: str  # cpu | io | memory
    path: str  # the opener's cgroup pressure file (or the host's), resolved at open
    privileged: bool  # the opener had CAP_SYS_RESOURCE
    serial: int  # unique per open: a reused fh is a different file
    trigger: bytes | None = None  # the validated trigger, NUL-terminated, once written
    pending: bool = False  # an event fired that no POLL has reported yet
    gone: bool = False  # the trigger's source went away (cgroup removed): POLLERR from now on


class PollHandle(Protocol):
    """pyfuse3's PollHandle (its C extension has no type information): what a POLL left to be woken."""

    def notify(self) -> None: ...


class SpecStore(Protocol):
    """fh -> PressureSpec. In one process a dict; the multi-worker daemon keeps it in its shared arena."""

    def get(self, fh: int) -> PressureSpec | None: ...
    def put(self, fh: int, spec: PressureSpec) -> None: ...
    def drop(self, fh: int) -> None: ...


class LocalStore:
    def __init__(self) -> None:
        self._specs: dict[int, PressureSpec] = {}

    def get(self, fh: int) -> PressureSpec | None:
        return self._specs.get(fh)

    def put(self, fh: int, spec: PressureSpec) -> None:
        self._specs[fh] = spec

    def drop(self, fh: int) -> None:
        self._specs.pop(fh, None)


def parse_trigger(buf: bytes, privileged: bool) -> bytes:
    """The kernel's psi_write() checks on `buf`; returns the canonical NUL-terminated trigger or raises
    FUSEError(EINVAL). The kernel overwrites the last byte of a write with NUL, so what we write ends in one."""
    m = _TRIGGER.match(buf.split(b"\0", 1)[0])
    if m is None:
        raise pyfuse3.FUSEError(errno.EINVAL)
    kind, threshold, window = m.group(1), int(m.group(2)), int(m.group(3))
    if threshold >= _U32 or window >= _U32 or window == 0 or window > WINDOW_MAX_US:
        raise pyfuse3.FUSEError(errno.EINVAL)
    if threshold == 0 or threshold > window:
        raise pyfuse3.FUSEError(errno.EINVAL)
    if not privileged and window % UNPRIVILEGED_WINDOW_STEP_US:
        raise pyfuse3.FUSEError(errno.EINVAL)
    return b"%s %d %d\0" % (kind, threshold, window)


def has_cap_sys_resource(pid: int, proc: str = "/proc") -> bool:
    """CapEff bit 24 of `pid`, what the kernel checks on the file's opener for sub-2 s windows."""
    text = read_text(f"{proc}/{pid}/status") or ""
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
            except (IndexError, ValueError):
                return False
    return False


def _locked(method):
    """Run a Pressure entry point under its lock (the watcher thread changes the same state)."""

    def run(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    run.__name__, run.__doc__ = method.__name__, method.__doc__
    return run


class Pressure:
    """The pressure files' write/poll/release for operations.py; `enabled` is --enable-psi-poll."""

    def __init__(
        self,
        reader: CgroupReader,
        enabled: bool = True,
        store: SpecStore | None = None,
        proc: str = "/proc",
        host_dir: str = HOST_PRESSURE,
        mock_interval: float | None = None,
        watch: bool = True,
    ) -> None:
        self.reader = reader
        self.enabled = enabled
        self.store: SpecStore = store if store is not None else LocalStore()
        self.proc = proc
        self.host_dir = host_dir
        if mock_interval is None and os.environ.get(MOCK_ENV):
            mock_interval = float(os.environ[MOCK_ENV])
        self.mock_interval = mock_interval
        self.names = {name: name.rsplit("/", 1)[1] for name in config.PRESSURE_FILES}
        self._serial = itertools.count(os.getpid() << 32)
        self._local: set[int] = set()  # fhs opened through this process (fast check on the read path)
        self._fds: dict[int, tuple[int, int]] = {}  # fh -> (trigger fd, serial): this process's triggers
        self._by_fd: dict[int, int] = {}  # trigger fd -> fh
        self._handles: dict[int, PollHandle] = {}  # fh -> the PollHandle of the last POLL that asked for one
        self._epoll: select.epoll | None = None
        self.watch = watch  # False: no watcher thread (unit tests drive _drain by hand)
        self._watching = False
        self.lock = threading.RLock()

    # -- what operations.py asks ---------------------------------------------------------------------
    def writable(self, name: str) -> bool:
        return self.enabled and name in self.names

    def opened(self, fh: int, name: str, ref: CgroupRef | None, pid: int) -> None:
        if name in self.names:  # every open of every file asks: the others never take the lock
            self._opened(fh, name, ref, pid)

    @_locked
    def _opened(self, fh: int, name: str, ref: CgroupRef | None, pid: int) -> None:
        resource = self.names[name]
        if ref is None:
            path = f"{self.host_dir}/{resource}"
        else:
            path = pressure_file(self.reader, ref, resource, self.host_dir)
        privileged = has_cap_sys_resource(pid, self.proc) if self.enabled else False
        self.store.put(fh, PressureSpec(resource, path, privileged, next(self._serial)))
        self._local.add(fh)

    def holds(self, fh: int) -> bool:
        return fh in self._local

    @_locked
    def fresh(self, fh: int, old: bytes) -> bytes:
        """The file's text now (a reader that keeps the fd and reads again from 0 sees new figures)."""
        spec = self.store.get(fh)
        if spec is None:
            return old
        try:
            text = render_pressure(read_text(spec.path))
        except OSError:
            text = None
        return text.encode() if text is not None else old

    @_locked
    def write(self, fh: int, buf: bytes) -> int:
        spec = self.store.get(fh)
        if spec is None:
            raise pyfuse3.FUSEError(errno.EROFS)  # not a pressure file: read-only like every other
        if not self.enabled:
            raise pyfuse3.FUSEError(errno.EINVAL)  # LXCFS without --enable-psi-poll
        if spec.trigger is not None:
            raise pyfuse3.FUSEError(errno.EBUSY)
        trigger = parse_trigger(buf, spec.privileged)
        fd = self._create(spec.path, trigger)
        spec.trigger = trigger
        self.store.put(fh, spec)
        self._keep(fh, fd, spec.serial)
        return len(buf)

    @_locked
    def poll(self, fh: int, handle: PollHandle | None) -> int:
        spec = self.store.get(fh)
        if spec is None:
            return DEFAULT_POLLMASK
        if spec.trigger is None or spec.gone:
            return NO_TRIGGER_MASK
        if spec.pending:
            spec.pending = False
            self.store.put(fh, spec)
            self._handles.pop(fh, None)
            return DEFAULT_POLLMASK | select.POLLPRI
        held = self._fds.get(fh)
        if held is None or held[1] != spec.serial:
            try:
                self._keep(fh, self._create(spec.path, spec.trigger), spec.serial)
            except pyfuse3.FUSEError:
                return NO_TRIGGER_MASK
            held = self._fds[fh]
        p = select.poll()
        p.register(held[0], select.POLLPRI)
        for _, revents in p.poll(0):
            if revents & (select.POLLERR | select.POLLNVAL | select.POLLHUP):
                self._gone(fh, spec)
                return NO_TRIGGER_MASK
            if revents & select.POLLPRI:
                self._handles.pop(fh, None)
                return DEFAULT_POLLMASK | select.POLLPRI
        if handle is not None:
            self._handles[fh] = handle  # replaces (and so releases) an older one
        return DEFAULT_POLLMASK

    def release(self, fh: int) -> None:
        if fh in self._local or fh in self._fds:  # every release asks: the others never take the lock
            self._release(fh)

    @_locked
    def _release(self, fh: int) -> None:
        if fh not in self._local and fh not in self._fds:
            return
        self._local.discard(fh)
        self._close(fh)
        self.store.drop(fh)

    def sweep(self) -> None:
        """Close this process's triggers whose open file is gone (released in another worker) or reused."""
        for fh, (_, serial) in list(self._fds.items()):
            spec = self.store.get(fh)
            if spec is None or spec.serial != serial:
                self._close(fh)

    # -- this process's trigger fds ------------------------------------------------------------------
    def _create(self, path: str, trigger: bytes) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            log.debug("pressure trigger: open %s: %s", path, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        try:
            os.write(fd, trigger)
        except OSError as e:
            os.close(fd)
            log.debug("pressure trigger %r on %s: %s", trigger, path, e)
            raise pyfuse3.FUSEError(errno.EINVAL if e.errno == errno.EINVAL else errno.EIO) from None
        return fd

    def _keep(self, fh: int, fd: int, serial: int) -> None:
        self._close(fh)
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLPRI | select.EPOLLONESHOT)
        self._fds[fh] = (fd, serial)
        self._by_fd[fd] = fh
        self._start_watcher()

    def _close(self, fh: int) -> None:
        self._handles.pop(fh, None)
        held = self._fds.pop(fh, None)
        if held is None:
            return
        fd = held[0]
        self._by_fd.pop(fd, None)
        if self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        os.close(fd)

    def _gone(self, fh: int, spec: PressureSpec) -> None:
        spec.gone = True
        self.store.put(fh, spec)
        self._close(fh)

    def _fired(self, fh: int) -> None:
        spec = self.store.get(fh)
        if spec is None:
            self._close(fh)
            return
        spec.pending = True
        self.store.put(fh, spec)
        handle = self._handles.pop(fh, None)
        if handle is not None:
            try:
                handle.notify()
            except (OSError, RuntimeError) as e:
                log.debug("poll notify for fh %d: %s", fh, e)

    # -- the watcher ---------------------------------------------------------------------------------
    def _start_watcher(self) -> None:
        """One thread per process, started with its first trigger (so in the worker, after the fork): it
        blocks in epoll_wait on the trigger fds and, every few seconds, sweeps (and in mock mode fires).
        The serving thread is blocked in read(2) between requests (fs/syncloop), so the watcher handles
        events itself, under `lock`, which every entry point operations.py calls also takes."""
        if self._watching or not self.watch:
            return
        import threading

        self._watching = True
        threading.Thread(target=self._wait_loop, name="psi-triggers", daemon=True).start()

    def _wait_loop(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        step = min(SWEEP_INTERVAL, self.mock_interval or SWEEP_INTERVAL)
        next_tick = time.monotonic() + step
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while True:
            try:
                ready = epoll.poll(max(0.0, next_tick - time.monotonic()))
            except OSError:
                return  # closed
            with self.lock:
                for fd, events in ready:
                    self._on_event(fd, events)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + step
                    if self.mock_interval:
                        for fh in list(self._fds):
                            self._fired(fh)
                if now >= next_sweep:
                    next_sweep = now + SWEEP_INTERVAL
                    self.sweep()

    def _on_event(self, fd: int, events: int) -> None:
        """In the watcher thread, under `lock`: one trigger fd reported `events` (the kernel consumed it)."""
        fh = self._by_fd.get(fd)
        if fh is None:
            return
        if events & (select.EPOLLERR | select.EPOLLHUP):
            spec = self.store.get(fh)
            if spec is not None:
                self._gone(fh, spec)
                self._fired(fh)
            else:
                self._close(fh)
            return
        if events & select.EPOLLPRI:
            self._fired(fh)
        if fd in self._by_fd and self._epoll is not None:
            self._epoll.modify(fd, select.EPOLLPRI | select.EPOLLONESHOT)  # re-arm the one-shot

    def _drain(self) -> None:
        """Handle every trigger fd epoll reports ready now (without the thread: unit tests)."""
        if self._epoll is None:
            return
        for fd, events in self._epoll.poll(0):
            self._on_event(fd, events)
