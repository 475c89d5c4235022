"""The holder: the process that owns the FUSE connection and keeps workers serving it.

It mounts, answers the kernel's INIT itself (pyfuse3's loop, driven by fs/syncloop, runs only until the init
callback has run and is then left by an exception: `pyfuse3.terminate()` would mark the session exited for every
later loop), and then never serves a request. For each worker slot it makes a clone of the device fd
(FUSE_DEV_IOC_CLONE), keeps it, and forks a worker that serves on it (fs/worker.py); every worker waits in
read(2) on its clone and the kernel hands each request to one of them. It also runs
the loadavg sampler (fs/loadavg.py `SamplerService`) in small steps between events: off every serving path, and
without the memory of one more Python process.

A worker that dies (crash, OOM kill, SIGKILL) is seen at once on its pidfd. The requests it had taken sit in
its clone's processing queue, which lives on because the holder still holds that clone. The holder then
- on Linux >= 6.9 writes FUSE_NOTIFY_RESEND: the kernel queues every request being processed on the
  connection again, so the dead worker's go to the others (the live workers' in-flight requests are sent a
  second time too; the first reply of each then fails with ENOENT, which the worker ignores);
- on older kernels (the notification is refused with EINVAL), or with --no-resend, closes the dead clone:
  the kernel ends its in-flight requests with ECONNABORTED. A worker has one request in flight (handlers
  never await), so a crash costs at most one reader one failed read;
and forks a replacement on a fresh clone, in the same slot (so it continues the slot's snapshot arena).
More than `max_restarts` worker deaths within `restart_window` seconds is a crash loop: the holder gives
up and exits, and the supervisor's restart and repair take over, as for any death of the daemon.

Single-threaded, one poll loop on fds (worker pidfds, a readiness probe's pidfd, the signal wake-up pipe,
the sampler's socket): no polling, no request handlers. Its own death closes every fd of the connection
(workers die with it: PR_SET_PDEATHSIG), which is what the standby and the remount engine handle.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import gc
import logging
import os
import select
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxcfs_guard.fs.wire import FUSE_NOTIFY_RESEND, OUT_HEADER

log = logging.getLogger("lxcfs_guard.serve")

FUSE_DEV_IOC_CLONE = 0x8004E500  # _IOR(229, 0, uint32_t)


def fuse_fds() -> set[int]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                out.add(int(name))
        except OSError:
            continue
    return out


def clone_device(session_fd: int) -> int:
    """A new /dev/fuse fd attached to the connection of `session_fd`, with its own processing queue."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FUSE_DEV_IOC_CLONE, struct.pack("<I", session_fd))
    except OSError:
        os.close(fd)
        raise
    return fd


def connection_alive(fd: int) -> bool:
    """False once the connection is unmounted or aborted: the device then polls POLLERR."""
    p = select.poll()
    p.register(fd, 0)
    return not any(ev & select.POLLERR for _, ev in p.poll(0))


def notify_resend(fd: int) -> bool:
    """Ask the kernel to queue again every request in flight on the connection. False where the kernel
    does not know the notification (before 6.9: EINVAL)."""
    try:
        os.write(fd, OUT_HEADER.pack(OUT_HEADER.size, FUSE_NOTIFY_RESEND, 0))  # error: the code; unique 0
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS):
            return False
        raise
    return True


@dataclass
class Child:
    """A worker, or (slot -1) the readiness probe."""

    slot: int
    pid: int
    pidfd: int
    clone_fd: int = -1
    started: float = field(default_factory=time.time)
    restarts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "pid": self.pid,
            "started": round(self.started, 3),
            "restarts": self.restarts,
        }


MAX_BACKGROUND = 1024  # RELEASEs the kernel may have queued to us at once (kernel default: 12)
FUSECTL_DIR = "/sys/fs/fuse/connections"


def raise_background_limit(mountpoint: str, value: int = MAX_BACKGROUND, timeout: float = 2.0) -> bool:
    """Let the kernel queue up to `value` background requests (RELEASE is one) on our connection.

    With the kernel's default of 12, a busy connection releases at most 12 files per queue round trip:
    at 1,000 containers reading 6 files a second, releases fell behind opens and the snapshots of files
    already closed by their readers filled the arena (ENFILE, seen in bench/fleet.py at N=1000). libfuse
    takes no mount option for it; the fusectl file `max_background` does. It is written from a child in
    a private mount namespace with its own fusectl mount, so the host's mount table is left as it was
    (fusectl is often not mounted on hosts without systemd). Best effort, bounded by `timeout`."""
    from lxcfs_guard.kernel import syscalls

    fd = os.open(mountpoint, os.O_PATH | os.O_CLOEXEC)
    try:
        dev = syscalls.statx_cached(fd)[1]
    finally:
        os.close(fd)
    conn = f"{FUSECTL_DIR}/{(os.major(dev) << 20) | os.minor(dev)}"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            with contextlib.suppress(OSError):
                syscalls.mount("fusectl", FUSECTL_DIR, "fusectl")
            for name, v in (("max_background", value), ("congestion_threshold", value * 3 // 4)):
                with open(f"{conn}/{name}", "w") as f:
                    f.write(str(v))
            code = 0
        except OSError:
            pass
        finally:
            os._exit(code)
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            log.warning("setting the connection's background limit took over %g s: left as it was", timeout)
            return False
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    ok = os.waitstatus_to_exitcode(status) == 0
    if not ok:
        log.warning("could not raise the connection's background limit (fusectl); left at the kernel's default")
    return ok


class _InitAnswered(Exception):
    """Raised through pyfuse3's loop to leave it once INIT is answered."""


class Holder:
    def __init__(
        self,
        ops: Any,
        mountpoint: str,
        fuse_options: set[str],
        workers: int,
        *,
        resend: bool = True,
        max_restarts: int = 30,
        restart_window: float = 60.0,
        service: Any = None,
        worker_setup: Callable[[int], None] | None = None,
        private_fds: tuple[int, ...] = (),
    ) -> None:
        self.ops = ops
        self.mountpoint = mountpoint
        self.fuse_options = fuse_options
        self.n = workers
        self.resend = resend
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.service = service  # the loadavg sampler: fileno(), on_readable(), due() -> monotonic, step()
        self.worker_setup = worker_setup
        self.private_fds = set(private_fds)  # fds workers do not inherit
        self.session_fd = -1
        self.workers: dict[int, Child] = {}
        self.worker_restarts = 0
        self.resends = 0
        self.aborted = 0  # worker deaths handled by ending the in-flight requests (no resend)
        self._deaths: collections.deque[float] = collections.deque()
        self._stop = False
        self.ended = False  # the kernel ended the session (umount, abort): a clean end, not a crash loop
        self._wake_r = self._wake_w = -1
        self.pid = os.getpid()

    # -- start ------------------------------------------------------------------------------------------
    def mount(self) -> None:
        """Mount and answer INIT here, in the holder; afterwards the holder never reads the device again."""
        import pyfuse3

        from lxcfs_guard.fs import syncloop

        before = fuse_fds()
        pyfuse3.init(self.ops, self.mountpoint, self.fuse_options)
        new = fuse_fds() - before
        if len(new) != 1:
            raise RuntimeError(f"cannot tell pyfuse3's session fd among {sorted(new)}")
        self.session_fd = new.pop()
        answered: list[bool] = []

        def init() -> None:  # pyfuse3 calls it while handling INIT; libfuse replies right after
            answered.append(True)

        async def wait_readable(fd: int) -> None:
            # pyfuse3 asks this before it reads the next request: once INIT is answered, leave its loop
            # (pyfuse3.terminate() would mark the session exited for every worker's loop too)
            if answered:
                raise _InitAnswered

        # The same blocking loop the workers run (fs/syncloop), so whatever pyfuse3 creates on the way
        # (its reader lock) is of the kind the workers' loops understand.
        syncloop.install(pyfuse3, wait_readable)
        self.ops.init = init
        try:
            syncloop.run(pyfuse3.main(min_tasks=1, max_tasks=1))
        except _InitAnswered:
            pass
        finally:
            del self.ops.init
        if not answered:
            raise RuntimeError("the kernel ended the session before INIT")
        raise_background_limit(self.mountpoint)

    def start(self) -> None:
        # Everything allocated so far is shared with the children: keep the cyclic GC from touching (and so
        # copying) those pages in every child.
        gc.freeze()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.private_fds |= {self._wake_r, self._wake_w}
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        for slot in range(self.n):
            self._spawn(slot)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop = True

    def _all_fds(self) -> set[int]:
        fds = set(self.private_fds)
        for c in self.children():
            fds.add(c.pidfd)
            if c.clone_fd >= 0:
                fds.add(c.clone_fd)
        return fds

    def _spawn(self, slot: int, restarts: int = 0) -> Child:
        from lxcfs_guard.fs import worker

        clone = clone_device(self.session_fd)
        close = sorted((self._all_fds() | {clone}) - {self.session_fd})

        def main() -> None:
            if self.worker_setup is not None:
                self.worker_setup(slot)
            worker.run(self.ops, self.session_fd, clone, self.pid, close, lone=self.n == 1)

        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                main()
            finally:
                os._exit(1)
        child = Child(slot=slot, pid=pid, pidfd=os.pidfd_open(pid), clone_fd=clone, restarts=restarts)
        self.workers[slot] = child
        log.debug("worker %d: pid %d", slot, pid)
        return child

    def children(self) -> list[Child]:
        return list(self.workers.values())

    # -- run --------------------------------------------------------------------------------------------
    def run(self, on_ready: Callable[[], None], on_change: Callable[[], None], ready_timeout: float = 60.0) -> int:
        """Watch the children until SIGTERM/SIGINT (0), a crash loop or no answer through the mount within
        `ready_timeout` (1). `on_ready` runs once a read through the mount has answered (from a child: a
        read of a wedged mount must not block the holder); `on_change` after each worker replacement."""
        give_up = time.monotonic() + ready_timeout
        probe: Child | None = None
        probe_deadline = retry_at = 0.0
        ready = False
        while not self._stop:
            now = time.monotonic()
            if not ready and probe is None and now >= retry_at:
                if now > give_up:
                    log.error("no read through %s answered within %.0f s", self.mountpoint, ready_timeout)
                    return 1
                probe, probe_deadline = self._spawn_probe(), now + 5.0
            timeout = None
            if not ready:
                timeout = max(0.0, (probe_deadline if probe is not None else retry_at) - now)
            if self.service is not None:
                due = max(0.0, self.service.due() - now)
                timeout = due if timeout is None else min(timeout, due)
            fds = [self._wake_r] + [c.pidfd for c in self.children()] + ([probe.pidfd] if probe else [])
            if self.service is not None:
                fds.append(self.service.fileno())
            try:
                readable = select.select(fds, [], [], timeout)[0]
            except InterruptedError:
                readable = []
            if self._wake_r in readable:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            if probe is not None and (probe.pidfd in readable or time.monotonic() > probe_deadline):
                if probe.pidfd not in readable:
                    _pidfd_signal(probe.pidfd, signal.SIGKILL)
                status = self._reap(probe)
                probe = None
                if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                    ready = True
                    on_ready()
                else:
                    retry_at = time.monotonic() + 0.2
            for c in self.children():
                if c.pidfd in readable and not self._stop:
                    if not self._on_exit(c):
                        return 0 if self.ended else 1
                    if ready:
                        on_change()
            if self.service is not None and not self._stop:
                try:
                    if self.service.fileno() in readable:
                        self.service.on_readable()
                    if self.service.due() <= time.monotonic():
                        self.service.step()
                except Exception:  # never let loadavg take the connection down
                    log.exception("loadavg sampler")
        if probe is not None:
            _pidfd_signal(probe.pidfd, signal.SIGKILL)
            self._reap(probe)
        return 0

    def _spawn_probe(self) -> Child:
        path = os.path.join(self.mountpoint, "proc", "meminfo")
        close = sorted(self._all_fds() | {self.session_fd})
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                for fd in close:  # a probe must not keep a clone of the connection alive
                    os.close(fd)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                code = 0 if os.read(fd, 65536) else 1
            except BaseException:  # noqa: BLE001 - nothing may escape the forked probe: it exits 1
                pass
            os._exit(code)
        return Child(slot=-2, pid=pid, pidfd=os.pidfd_open(pid))

    def _reap(self, c: Child) -> int | None:
        try:
            _, status = os.waitpid(c.pid, 0)
        except ChildProcessError:
            status = None
        os.close(c.pidfd)
        c.pidfd = -1
        return status

    def _on_exit(self, c: Child) -> bool:
        status = self._reap(c)
        how = _describe(status)
        if not connection_alive(self.session_fd):  # unmounted or aborted (fusectl): workers end with it
            log.info("worker pid %d %s: the kernel ended the session", c.pid, how)
            self.ended = True
            return False
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.restart_window:
            self._deaths.popleft()
        recovered = "resent its requests"
        if self.resend and notify_resend(self.session_fd):
            self.resends += 1
        else:
            if self.resend:
                log.warning(
                    "this kernel cannot resend requests (FUSE_NOTIFY_RESEND, Linux 6.9): a worker's "
                    "crash fails the request it had in hand"
                )
                self.resend = False
            self.aborted += 1
            recovered = "ended its in-flight request"
        os.close(c.clone_fd)  # after the resend its processing queue is empty; else this ends what it held
        c.clone_fd = -1
        del self.workers[c.slot]
        self.worker_restarts += 1
        if len(self._deaths) > self.max_restarts:
            log.error(
                "worker pid %d %s; %d process deaths in %.0f s: a crash loop, giving up",
                c.pid,
                how,
                len(self._deaths),
                self.restart_window,
            )
            return False
        new = self._spawn(c.slot, restarts=c.restarts + 1)
        log.warning("worker %d (pid %d) %s; %s; replaced by pid %d", c.slot, c.pid, how, recovered, new.pid)
        return True

    # -- stop -------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 2.0) -> None:
        """Stop every child by its pidfd (SIGTERM: a worker finishes the request in hand), SIGKILL what is
        left after `timeout`; the caller unmounts afterwards."""
        kids = [c for c in self.children() if c.pidfd >= 0]
        for c in kids:
            _pidfd_signal(c.pidfd, signal.SIGCONT)  # a stopped worker cannot act on SIGTERM
            _pidfd_signal(c.pidfd, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in kids:
            remaining = max(0.0, deadline - time.monotonic())
            if not select.select([c.pidfd], [], [], remaining)[0]:
                _pidfd_signal(c.pidfd, signal.SIGKILL)
            self._reap(c)
            if c.clone_fd >= 0:
                os.close(c.clone_fd)
                c.clone_fd = -1
        self.workers.clear()
        signal.set_wakeup_fd(-1)

    def kill_children(self) -> None:
        for c in self.children():
            if c.pidfd >= 0:
                _pidfd_signal(c.pidfd, signal.SIGKILL)


def _pidfd_signal(pidfd: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, sig)


def _describe(status: int | None) -> str:
    if status is None:
        return "exited"
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
