"""The requests every read brings (OPEN, READ, FLUSH, RELEASE) answered straight from the device fd; every
other request handed to pyfuse3 unchanged.

Why: a container's agent that reads /proc/meminfo costs four requests: OPEN, READ, a READ that finds the end,
and RELEASE. On a busy node (bench/fleet.py) pyfuse3's per-request machinery (a request loop written as
coroutines, a lock, a container object and a coroutine per request, then the handler's) cost more CPU than
the rendering itself, and that is where LXCFS, in C, was cheaper. This loop reads a request into one reused
buffer, unpacks its header, calls the body of the Operations method pyfuse3 would (`open_now`: no coroutine
to drive) and writes the reply: a few Python operations per request. What the rest of the filesystem needs
(LOOKUP, GETATTR, the cpu directory, statfs, poll, the pressure files' writes, INIT's successors) stays with
pyfuse3 and its tested handlers.

How the two share one device fd: pyfuse3's session fd is one end of a SOCK_SEQPACKET socketpair, and this
loop holds the real clone of /dev/fuse. A request this loop does not answer is sent whole into the pair,
as one message, and pyfuse3 reads it from its end exactly as from the device; its reply, written to the
same end, is forwarded to the device before the next request is read. The loop runs inside the worker's
`wait_readable` (fs/syncloop), which pyfuse3 calls before each of its reads, so pyfuse3 handles one request
whenever this loop passes it one, and the worker still has one request in flight.

A reply the kernel refuses (ENOENT: the request was resent after a worker died and another worker already
answered it) loses nothing here but an OPEN's or OPENDIR's fresh snapshot, which is freed at once, since no
RELEASE will ever come for it.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import pyfuse3

from lxcfs_guard.fs.spin import Spin
from lxcfs_guard.fs.wire import (
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    FOPEN_NONSEEKABLE,
    FUSE_FLUSH,
    FUSE_OPEN,
    FUSE_OPENDIR,
    FUSE_READ,
    FUSE_RELEASE,
    IN_HEADER,
    OPEN_IN,
    OPEN_OUT,
    OUT_HEADER,
    READ_IN,
    RELEASE_IN,
)

log = logging.getLogger("lxcfs_guard.serve")

# What the kernel may hand over at once: a WRITE of max_write bytes plus headers (libfuse's bufsize).
BUFSIZE = (1 << 20) + 4096


class Stop(Exception):
    """Raised from the SIGTERM handler while the loop waits for a request: end the worker between requests."""


class Caller:
    """The part of pyfuse3's RequestContext that handlers read."""

    __slots__ = ("pid", "uid", "gid", "umask")

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.umask = 0


class FastPath:
    """One worker's request loop over its clone of the device fd (`dev_fd`); `session_fd` is the fd number
    pyfuse3 reads and writes, which this turns into its end of the socketpair."""

    def __init__(
        self,
        ops: Any,
        dev_fd: int,
        session_fd: int,
        notifications: bool = False,
        spin: bool = False,
    ) -> None:
        self.ops = ops
        self.dev_fd = dev_fd
        # a lone worker polls for the next request of a caller in a tight loop (fs/spin.py)
        self.spin = Spin(_readable(dev_fd)) if spin else None
        # Another thread (the PSI trigger watcher) may write to pyfuse3's end at any time: a poll wake-up
        # (FUSE_NOTIFY_POLL), which must reach the device at once, not with the next passed request's reply.
        self.notifications = notifications
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * BUFSIZE)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * BUFSIZE)
        os.dup2(theirs.fileno(), session_fd)  # pyfuse3 now reads requests from, and replies into, the pair
        theirs.close()
        ours.setblocking(False)
        self.pair = ours
        # an anonymous mapping, not a bytearray: only the pages a request reaches are ever resident (a READ
        # or OPEN request fits in the first one), where a bytearray would zero-fill, and keep, all of it
        self.buf = mmap.mmap(-1, BUFSIZE)
        self.view = memoryview(self.buf)
        self.passed: int | None = None  # opcode of the request pyfuse3 has, until its reply is forwarded
        self.idle = False  # waiting in read(2) for a request: a stop signal may interrupt it
        self.stopped = False
        self.handlers: dict[int, Callable[[int, int, int, int, int], None]] = {
            FUSE_OPEN: self._open,
            FUSE_READ: self._read,
            FUSE_RELEASE: self._release,
            FUSE_FLUSH: self._flush,
        }

    # -- the loop -------------------------------------------------------------------------------------
    def serve_until_passed(self) -> bool:
        """Answer requests until one is for pyfuse3 (then True: it is waiting in the pair) or the session
        ended (False: the pair is closed, so pyfuse3's read finds the end and its loop returns)."""
        self._forward_replies()
        readv, dev_fd, buf, handlers = os.readv, self.dev_fd, [self.buf], self.handlers
        unpack = IN_HEADER.unpack_from
        spin, clock = self.spin, time.monotonic
        started = 0.0
        while True:
            if self.stopped:
                raise Stop()
            self.idle = True
            if self.notifications:
                self._wait_for_request()
            if spin is not None:
                started = spin.ready()
            try:
                n = readv(dev_fd, buf)
            except OSError as e:
                self.idle = False
                if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue  # ENOENT: the request was interrupted before we read it
                if e.errno == errno.ENODEV:  # unmounted: the session is over
                    self.pair.close()
                    return False
                raise
            self.idle = False
            if n < IN_HEADER.size:
                log.error("short read of %d bytes from the FUSE device", n)
                continue
            _, opcode, unique, nodeid, uid, gid, pid, _, _ = unpack(self.buf)
            if spin is not None:
                spin.took(pid, clock() - started)
            handler = handlers.get(opcode)
            if handler is None:
                self.passed = opcode
                self.pair.send(self.view[:n])
                return True
            handler(unique, nodeid, uid, gid, pid)

    def _wait_for_request(self) -> None:
        """Until the device has a request, forward what other threads write to pyfuse3's end."""
        pair = self.pair.fileno()
        while True:
            ready = select.select([self.dev_fd, pair], [], [])[0]
            if pair in ready:
                self._forward_replies()
            if self.dev_fd in ready:
                return

    def _forward_replies(self) -> None:
        """Write what pyfuse3 answered (if anything: FORGET and INTERRUPT get no reply) to the device."""
        while True:
            try:
                reply = self.pair.recv(BUFSIZE)
            except BlockingIOError:
                break
            if not reply:
                break
            try:
                os.write(self.dev_fd, reply)
            except OSError as e:
                if _refused(e, "a passed request") and self.passed == FUSE_OPENDIR:
                    _, error, _ = OUT_HEADER.unpack_from(reply)
                    if error == 0 and len(reply) >= OUT_HEADER.size + OPEN_OUT.size:
                        self.ops.reply_failed(OPEN_OUT.unpack_from(reply, OUT_HEADER.size)[0])  # a listing
        self.passed = None

    def _reply(self, unique: int, payload: bytes, what: str, error: int = 0) -> bool:
        """Send a reply (or, with `error`, an errno); False if the kernel refused it."""
        try:
            os.write(self.dev_fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload)
            return True
        except OSError as e:
            _refused(e, what)
            return False

    # -- the four requests of a read ------------------------------------------------------------------
    def _open(self, unique: int, nodeid: int, uid: int, gid: int, pid: int) -> None:
        flags = OPEN_IN.unpack_from(self.buf, IN_HEADER.size)[0]
        try:
            fi = self.ops.open_now(nodeid, flags, Caller(pid, uid, gid))
        except pyfuse3.FUSEError as e:
            self._reply(unique, b"", "OPEN", e.errno)
            return
        open_flags = (
            (FOPEN_DIRECT_IO if fi.direct_io else 0)
            | (FOPEN_KEEP_CACHE if fi.keep_cache else 0)
            | (FOPEN_NONSEEKABLE if fi.nonseekable else 0)
        )
        if not self._reply(unique, OPEN_OUT.pack(fi.fh, open_flags, 0), "OPEN"):
            self.ops.reply_failed(fi.fh)  # nobody will release this fh: free its snapshot now

    def _read(self, unique: int, nodeid: int, uid: int, gid: int, pid: int) -> None:
        fh, off, size = READ_IN.unpack_from(self.buf, IN_HEADER.size)
        try:
            data = self.ops.read_now(fh, off, size)
        except pyfuse3.FUSEError as e:
            self._reply(unique, b"", "READ", e.errno)
            return
        self._reply(unique, data, "READ")

    def _release(self, unique: int, nodeid: int, uid: int, gid: int, pid: int) -> None:
        fh = RELEASE_IN.unpack_from(self.buf, IN_HEADER.size)[0]
        try:
            self.ops.release_now(fh)
        except pyfuse3.FUSEError as e:
            self._reply(unique, b"", "RELEASE", e.errno)
            return
        self._reply(unique, b"", "RELEASE")

    def _flush(self, unique: int, nodeid: int, uid: int, gid: int, pid: int) -> None:
        # ENOSYS once and the kernel never sends FLUSH again on this connection (nothing to flush here)
        self._reply(unique, b"", "FLUSH", errno.ENOSYS)


def _readable(fd: int) -> select.poll:
    """A poll for a request waiting on the device."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return p


def _refused(e: OSError, what: str) -> bool:
    """Log a reply the device did not take; True if the kernel refused it as answered already (ENOENT: the
    request was resent after a worker died and another worker answered it), which is expected."""
    if e.errno == errno.ENOENT:
        log.debug("a reply was refused, its request was resent and answered again: %s", what)
        return True
    log.error("a reply to %s could not be written to the FUSE device: %s", what, e)
    return False
