"""Health probe: read one file through the FUSE mount from a forked child with its own deadline.

Why a child: a read on a hung FUSE connection blocks the reader (in the kernel, possibly
uninterruptibly once the daemon has taken the request). The supervisor must stay responsive, so the read
happens in a throw-away process and the supervisor only watches a pidfd. A child stuck in D state is
released by aborting the connection (fusectl), which the caller does before killing anything.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import select
import signal
import time
from dataclasses import dataclass

_EMPTY = 200  # exit code: the read succeeded but returned nothing
_OTHER = 201  # exit code: any other failure in the child


class Outcome(enum.Enum):
    OK = "ok"
    ERROR = "error"  # the read failed (ENOTCONN: the daemon is gone)
    TIMEOUT = "timeout"  # no answer before the deadline: the daemon hangs


@dataclass(frozen=True, slots=True)
class ProbeResult:
    outcome: Outcome
    elapsed: float
    errno: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def describe(self) -> str:
        if self.outcome is Outcome.ERROR and self.errno:
            return f"error {errno.errorcode.get(self.errno, self.errno)}"
        if self.outcome is Outcome.ERROR:
            return "error (empty read)"
        return f"{self.outcome.value} after {self.elapsed * 1000:.0f} ms"


def _child(path: str) -> None:
    code = _OTHER
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            code = 0 if os.read(fd, 65536) else _EMPTY
        finally:
            os.close(fd)
    except OSError as e:
        code = e.errno if e.errno and e.errno < _EMPTY else _OTHER
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        code = _OTHER
    os._exit(code)


def _result_from_status(status: int, elapsed: float) -> ProbeResult:
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return ProbeResult(Outcome.OK, elapsed)
    return ProbeResult(Outcome.ERROR, elapsed, code if 0 < code < _EMPTY else None)


class Probe:
    """One probe in flight. `fileno()` (a pidfd) becomes readable when the child is done; `result()`
    then returns its outcome. `expired(now)` tells the caller its deadline passed; `cancel()` kills the
    child (call fusectl abort first if it may sit in D state)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            _child(path)
        self._pidfd = os.pidfd_open(self.pid)
        self._result: ProbeResult | None = None

    def fileno(self) -> int:
        return self._pidfd

    def expired(self, now: float) -> bool:
        return self._result is None and now >= self.deadline

    def result(self) -> ProbeResult | None:
        """The outcome if the child has finished (never blocks)."""
        if self._result is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._result = _result_from_status(status, time.monotonic() - self.started)
                self._close()
        return self._result

    def cancel(self, wait: float = 1.0) -> ProbeResult:
        """Give up on the probe (its outcome is TIMEOUT, whatever the child does now): kill the child and
        reap it (waits at most `wait` for a child stuck in the kernel; `reap_strays` reaps it later)."""
        if self._result is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if select.select([self._pidfd], [], [], wait)[0]:
                os.waitpid(self.pid, 0)
            else:
                _strays.add(self.pid)
            self._result = ProbeResult(Outcome.TIMEOUT, time.monotonic() - self.started)
            self._close()
        return self._result

    def _close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


_strays: set[int] = set()


def leave_behind(pid: int) -> None:
    """A child of ours we gave up on (it may be stuck in the kernel): reaped by `reap_strays` once it dies,
    never waited on."""
    _strays.add(pid)


def reap_strays() -> None:
    """Reap probe children that outlived their cancel() (stuck until their connection was aborted)."""
    for pid in list(_strays):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        _strays.discard(pid)


def probe(path: str, timeout: float) -> ProbeResult:
    """Blocking probe for one-shot callers (`status`, tests): at most `timeout` seconds."""
    p = Probe(path, timeout)
    remaining = p.deadline - time.monotonic()
    if remaining > 0:
        select.select([p], [], [], remaining)
    return p.result() or p.cancel(wait=0.2)
