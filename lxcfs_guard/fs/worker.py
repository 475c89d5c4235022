"""One serving process: pyfuse3's loop on its own clone of the connection's device fd, in a child the holder
forked (fs/connection.py). It never returns into the holder's code: `run` ends in os._exit.

Why a clone: each clone of /dev/fuse (FUSE_DEV_IOC_CLONE) takes requests from the connection's one input
queue but keeps the requests it took in a processing queue of its own, which the holder can ask the kernel
to queue again if this process dies (FUSE_NOTIFY_RESEND). pyfuse3 keeps the session fd in a C global, so
the clone is dup2'd onto that fd number.

The fd is blocking, as libfuse opens it: when several workers wait, the kernel wakes them all for one
request (poll), the losers block in read(2) as exclusive waiters and take the next ones. A worker blocked
there still stops at once on SIGTERM: read(2) returns EINTR, pyfuse3 loops into trio, and trio's signal
receiver ends the loop after the request in hand.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Iterable
from typing import Any, NoReturn

log = logging.getLogger("lxcfs_guard.serve")

PR_SET_PDEATHSIG = 1
# Test-only: "FILE:MARKER[,FILE:MARKER...]" makes the first worker that opens FILE (a path in the mount, e.g.
# proc/uptime) stop itself (SIGSTOP) with the request in hand, if it can create MARKER; tests kill it there.
STALL_ENV = "LXCFS_GUARD_TEST_STALL"


class _ReplyFailures(logging.Filter):
    """pyfuse3 logs an error when a reply cannot be sent. After a resend that is expected (the request was
    answered by another worker; the kernel forgot its old id): count it, free an OPEN's snapshot, keep quiet."""

    def __init__(self, ops: Any) -> None:
        super().__init__()
        self.ops = ops
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if "fuse_reply_* failed" not in msg:
            return True
        self.count += 1
        if msg.startswith("fuse_link()"):  # pyfuse3 reports open's reply under link's name
            self.ops.reply_failed()
        if record.args == ("No such file or directory",):
            log.debug("a reply was refused, its request was resent and answered again: %s", msg.split("(")[0])
            return False
        return True


def _stall_hook(ops: Any) -> None:
    spec = os.environ.get(STALL_ENV)
    if not spec:
        return
    stalls = dict(item.split(":", 1) for item in spec.split(",") if ":" in item)  # file -> marker
    real_open = ops.open

    async def open_and_stall(inode, flags, ctx):  # noqa: ANN001 - pyfuse3's signature
        node = ops.tree.get(inode)
        marker = stalls.get(node.name) if node is not None else None
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                os.kill(os.getpid(), signal.SIGSTOP)
            except FileExistsError:
                pass
        return await real_open(inode, flags, ctx)

    ops.open = open_and_stall


def run(ops: Any, session_fd: int, clone_fd: int, holder_pid: int, close_fds: Iterable[int], max_tasks: int) -> NoReturn:
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
        os.dup2(clone_fd, session_fd)
        for fd in close_fds:
            if fd not in (session_fd,):
                try:
                    os.close(fd)
                except OSError:
                    pass
        logging.getLogger("pyfuse3").addFilter(_ReplyFailures(ops))
        _stall_hook(ops)
        code = _serve(max_tasks)
    except BaseException:  # noqa: BLE001 - a worker never returns into the holder's code
        log.exception("worker failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _serve(max_tasks: int) -> int:
    import pyfuse3
    import trio

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch_signals)
            await pyfuse3.main(min_tasks=1, max_tasks=max(1, max_tasks))
            nursery.cancel_scope.cancel()  # the kernel ended the session (umount, abort)

    trio.run(main)
    return 0
