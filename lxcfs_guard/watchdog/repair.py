"""One repair pass of the supervisor, in a forked child the poll loop watches, with a deadline it enforces.

Why a child, always: a repair reaches into containers' mount namespaces, and a container can wedge what
happens there (a never-answering FUSE mount on a target's path, an inode lock held by its own daemon).
In-process, that froze the supervisor's whole loop: the new serve was up but the host mountpoint was not
published again, status stopped updating and SIGTERM was ignored. In a child, the loop keeps probing,
answering signals and writing the status while the repair runs; past its deadline the child is killed,
and one that cannot die (D state) is left behind, never waited on (`probe.leave_behind`).

The child runs two passes and reports each as one JSON line on a pipe: the registered containers (the
recovery figure), then the discovery sweep of every process's mount table (whose cost grows with the
host: off the loop, it cannot hold the loop past WatchdogSec either).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any

from lxcfs_guard.watchdog.probe import leave_behind

REGISTERED = "registered"
ALL = "all"


def summary(report: Any) -> dict[str, Any]:
    """What the supervisor keeps of an engine report (JSON-able)."""
    broken = "; ".join([report.error or ""] + [ns.line().replace("\n", ",") for ns in report.namespaces if not ns.ok])
    return {"ok": bool(report.ok), "broken": broken.strip("; ")}


def _child(w: int, passes: list[tuple[str, Any]]) -> None:  # pragma: no cover - runs in the child
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for name, run in passes:
            t0 = time.monotonic()
            try:
                result = summary(run())
            except Exception as e:  # noqa: BLE001 - reported as a failed pass, never raised into our code
                result = {"ok": False, "broken": repr(e)}
            result.update({"pass": name, "ms": round((time.monotonic() - t0) * 1000, 1)})
            os.write(w, json.dumps(result).encode() + b"\n")
        code = 0
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        pass
    finally:
        os._exit(code)


class RepairJob:
    """A repair child in flight. Poll `fileno()`; `read()` returns the passes reported since the last call;
    `finished` once the child closed its end; `expired(now)` past the deadline; `cancel()` kills it."""

    def __init__(self, passes: list[tuple[str, Any]], timeout: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.timeout = timeout
        r, w = os.pipe2(os.O_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.close(r)
            _child(w, passes)
        os.close(w)
        os.set_blocking(r, False)
        self._r = r
        self._buf = b""
        self.finished = False
        self.results: dict[str, dict[str, Any]] = {}

    def fileno(self) -> int:
        return self._r

    def expired(self, now: float) -> bool:
        return not self.finished and now >= self.deadline

    def read(self) -> list[dict[str, Any]]:
        """The passes reported since the last call (never blocks); sets `finished` at end of file."""
        out: list[dict[str, Any]] = []
        while self._r >= 0:
            try:
                chunk = os.read(self._r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self._finish()
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                result = json.loads(line)
                if isinstance(result, dict):
                    self.results[str(result.get("pass"))] = result
                    out.append(result)
        return out

    def cancel(self) -> None:
        """Kill the child (past its deadline, or superseded by a newer repair); never waits on it."""
        if not self.finished:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._finish()

    def _finish(self) -> None:
        self.finished = True
        if self._r >= 0:
            os.close(self._r)
            self._r = -1
        try:
            done = os.waitpid(self.pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            done = True
        if not done:
            leave_behind(self.pid)  # reaped later by reap_strays (it may sit in D state for a while)
