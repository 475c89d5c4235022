"""One serving process: pyfuse3's loop on its own clone of the connection's device fd, in a child the holder
forked (fs/connection.py). It never returns into the holder's code: `run` ends in os._exit.

Why a clone: each clone of /dev/fuse (FUSE_DEV_IOC_CLONE) takes requests from the connection's one input
queue but keeps the requests it took in a processing queue of its own, which the holder can ask the kernel
to queue again if this process dies (FUSE_NOTIFY_RESEND). pyfuse3 keeps the session fd in a C global, so
the clone is dup2'd onto that fd number.

Every worker's fd is blocking, as libfuse opens it, and an idle worker waits in read(2) on it (see `_serve`):
the kernel hands each request to one waiting worker, as it does to LXCFS's threads, so a worker that is busy,
preempted or stuck in a request never holds up the requests behind it while another is free. (One worker
serving all it keeps up with, the others woken only when it fell behind, took 10% less CPU per read on a busy
node but left requests queued behind a preempted worker: p99 1.26x LXCFS's at N=200, against parity with every
worker waiting in read(2) at the time, bench/fleet.py; see the README's Measured section.)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Iterable
from typing import Any, NoReturn

from lxcfs_guard.fs.fastpath import FastPath, Stop

log = logging.getLogger("lxcfs_guard.serve")

PR_SET_PDEATHSIG = 1
# Test-only: "FILE:MARKER[,FILE:MARKER...]" makes the first worker that opens FILE (a path in the mount, e.g.
# proc/uptime) stop itself (SIGSTOP) with the request in hand, if it can create MARKER; tests kill it there.
STALL_ENV = "LXCFS_GUARD_TEST_STALL"


def _stall_hook(ops: Any) -> None:
    spec = os.environ.get(STALL_ENV)
    if not spec:
        return
    stalls = dict(item.split(":", 1) for item in spec.split(",") if ":" in item)  # file -> marker
    real_open = ops.open_now

    def open_and_stall(inode, flags, ctx):
        node = ops.tree.get(inode)
        marker = stalls.get(node.name) if node is not None else None
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                os.kill(os.getpid(), signal.SIGSTOP)
            except FileExistsError:
                pass
        return real_open(inode, flags, ctx)

    ops.open_now = open_and_stall  # the fast path's open (fs/fastpath.py); pyfuse3's goes through it too


def run(
    ops: Any,
    session_fd: int,
    clone_fd: int,
    holder_pid: int,
    close_fds: Iterable[int],
    lone: bool = True,
) -> NoReturn:
    """Serve until the session ends. A `lone` worker (the connection's only one) spins for a caller in a
    tight loop (fs/spin.py); with others waiting in read(2) beside it, one of them takes the next request."""
    code = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the holder's death ends us (and the connection)
        if os.getppid() != holder_pid:
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        dev_fd = os.dup(clone_fd)  # read by the fast path (fs/fastpath.py); pyfuse3's fd becomes its pair
        for fd in close_fds:
            if fd not in (session_fd, dev_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        _stall_hook(ops)
        psi = bool(getattr(getattr(ops, "pressure", None), "enabled", False))  # a trigger thread notifies
        fast = FastPath(ops, dev_fd, session_fd, notifications=psi, spin=lone)
        code = _serve(fast)
    except BaseException:  # a worker never returns into the holder's code
        log.exception("worker failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _exit_quietly(code: int) -> NoReturn:
    logging.shutdown()
    os._exit(code)


def _serve(fast: FastPath) -> int:
    """pyfuse3's loop, driven by fs/syncloop instead of trio, with the fast path in front of it: before each
    of pyfuse3's reads, `wait_readable` runs the fast path, which answers the requests of a read itself and
    returns when it has passed pyfuse3 one of the others. An idle worker waits inside read(2) on its blocking
    device fd (without the GIL: a PSI trigger watcher thread keeps running), where the kernel wakes exactly
    one waiting worker per request, and no scheduler runs between requests. SIGTERM while idle ends the
    worker there; in the middle of a request it ends it after that request, never with one in hand.
    Handlers never await, so a worker has one request in flight."""
    import pyfuse3

    from lxcfs_guard.fs import syncloop

    def on_stop(signum: int, frame: Any) -> None:
        fast.stopped = True
        if fast.idle:
            raise Stop()

    async def wait_readable(fd: int) -> None:
        try:
            if fast.serve_until_passed():
                return
        except Stop:
            _exit_quietly(0)
        pyfuse3.terminate()  # the session ended: pyfuse3's read of the closed pair finds it, and its loop ends

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    syncloop.install(pyfuse3, wait_readable)
    syncloop.run(pyfuse3.main(min_tasks=1, max_tasks=1))  # returns when the kernel ends the session
    return 0
