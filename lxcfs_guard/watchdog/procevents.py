"""Process exits from the kernel's proc connector (netlink), through pyroute2's ProcEventSocket.

A pidfd tells us when our own children die; the proc connector tells us when *any* process dies, which
is how the supervisor learns at once that a registered container's init is gone (so it is unregistered
instead of being "repaired" forever) and that a daemon we adopted, not our child, exited.
Needs CAP_NET_ADMIN (root); `open_events()` returns None where it is not available, and the supervisor
then relies on pidfds and its periodic registry check alone.
"""

from __future__ import annotations

import contextlib
import select
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
    """A bound, listening proc-connector socket. Poll `fileno()`; call `drain()` when it is readable."""

    def __init__(self) -> None:
        from pyroute2 import ProcEventSocket  # heavy (~0.2 s): only supervise pays for it

        self._sock = ProcEventSocket()
        try:
            self._sock.bind()
            self._sock.control(listen=True)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self, limit: int = 10000) -> list[int]:
        """Every exit queued now (never blocks: reads only while the socket says it is readable)."""
        exits: list[int] = []
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        for _ in range(limit):
            if not poller.poll(0):
                break
            try:
                exits.extend(exited_tgids(list(self._sock.get())))
            except OSError as e:  # ENOBUFS: the kernel dropped events under load; the caller rescans
                if e.errno != 105:
                    raise
                exits.append(-1)
        return exits

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sock.control(listen=False)
        with contextlib.suppress(Exception):
            self._sock.close()


def open_events() -> ProcEvents | None:
    try:
        return ProcEvents()
    except Exception:  # noqa: BLE001 - no netlink connector here: degrade to pidfds + rescans
        return None
