"""Process exits from the kernel's proc connector (netlink), with pyroute2's cn_proc messages.

A pidfd tells us when our own children die; the proc connector tells us when *any* process dies, which
is how the supervisor learns at once that a registered container's init is gone (so it is unregistered
instead of being "repaired" forever) and that a daemon we adopted, not our child, exited.
Needs CAP_NET_ADMIN (root); `open_events()` returns None where it is not available, and the supervisor
then relies on pidfds and its periodic registry check alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Any

EXIT_EVENT = "PROC_EVENT_EXIT"


def exited_tgids(messages: list[Any]) -> list[int]:
    """Pids of whole processes (thread-group leaders) that exited, from decoded connector messages.
    A thread's exit is not its process's exit: only pid == tgid counts."""
    out = []
    for m in messages:
        if m.get("event") == EXIT_EVENT:
            pid, tgid = m.get("process_pid"), m.get("process_tgid")
            if pid and pid == tgid:
                out.append(int(tgid))
    return out


class ProcEvents:
    """A listening proc-connector socket. Poll `fileno()`; call `drain()` when it is readable.

    The socket is ours (non-blocking, in our poll loop); pyroute2 provides the protocol: the control
    message that subscribes, and the marshal that decodes events. Its own sync `get()` is not used: it reads
    datagrams into a private buffer and hands them out one call at a time, so an exit could sit there,
    unseen by poll(), until some other process happened to exit."""

    def __init__(self) -> None:
        from pyroute2.netlink import NETLINK_CONNECTOR, NLMSG_DONE  # heavy (~0.2 s): only supervise pays
        from pyroute2.netlink.connector.cn_proc import (
            CN_IDX_PROC,
            CN_VAL_PROC,
            PROC_CN_MCAST_LISTEN,
            ProcEventMarshal,
            proc_event_control,
        )

        self._marshal = ProcEventMarshal()
        kind = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        self._sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_CONNECTOR)
        try:
            with contextlib.suppress(OSError):  # a bigger buffer: fewer lost events (ENOBUFS) under a fork storm
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._sock.bind((0, CN_IDX_PROC))
            msg = proc_event_control()
            msg["header"]["type"] = NLMSG_DONE
            msg["header"]["pid"] = self._sock.getsockname()[0]
            msg["idx"], msg["val"], msg["len"] = CN_IDX_PROC, CN_VAL_PROC, 4
            msg["action"] = PROC_CN_MCAST_LISTEN
            msg.encode()
            self._sock.send(msg.data)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self, limit: int = 100000) -> list[int]:
        """Pids of every process exit queued now (never blocks). -1 in the list: events were lost
        (the kernel dropped some, ENOBUFS), so the caller should rescan."""
        exits: list[int] = []
        for _ in range(limit):
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                exits.append(-1)
                continue
            exits.extend(exited_tgids(list(self._marshal.parse(data))))
        return exits

    def close(self) -> None:
        self._sock.close()


PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial pid namespace's fixed inode (include/linux/proc_ns.h)


def open_events() -> ProcEvents | None:
    """The proc connector only serves listeners in the initial pid and network namespaces (a supervisor in
    a container or a systemd box gets none): None there, or when anything else stands in the way."""
    try:
        if os.stat("/proc/self/ns/pid").st_ino != PROC_PID_INIT_INO:
            return None
    except OSError:
        return None
    try:
        return ProcEvents()
    except Exception:  # noqa: BLE001 - no netlink connector here: degrade to pidfds + rescans
        return None
