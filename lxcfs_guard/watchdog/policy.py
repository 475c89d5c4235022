"""When to restart: pure decisions, no clock of their own (callers pass `now`), so they are unit-tested
without sleeping.

Two rules, kept apart on purpose:
- **Backoff** slows down only an instance that fails *before it ever served* (a broken binary, a
  mountpoint that cannot be mounted). An instance that was healthy and then crashed is restarted at
  once: every millisecond of delay there is a millisecond of ENOTCONN in every container.
- **Crash-loop limit** counts every restart in a sliding window; past it `supervise` gives up and exits
  non-zero, so the layer above (systemd's Restart= with its StartLimitBurst, a DaemonSet) sees it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before the next start: 0 after a healthy instance died, then `initial`, doubling up to
    `maximum` while starts keep failing before the mount answers."""

    initial: float = 0.1
    maximum: float = 5.0
    failures: int = 0

    def next_delay(self) -> float:
        if self.failures == 0:
            return 0.0
        return min(self.maximum, self.initial * (2 ** (self.failures - 1)))

    def failed_before_ready(self) -> None:
        self.failures += 1

    def became_ready(self) -> None:
        self.failures = 0


@dataclass
class CrashLoop:
    """At most `limit` restarts within `window` seconds (limit 0 = unlimited)."""

    limit: int = 10
    window: float = 60.0
    _times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def exceeded(self, now: float) -> bool:
        self._trim(now)
        return self.limit > 0 and len(self._times) > self.limit

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()


@dataclass
class WatchdogPinger:
    """WATCHDOG=1 at most every `interval` seconds (a quarter of WatchdogSec: a ping is only earned by a
    passing probe, so it must be cheap to be early), and only after a passing probe: a hung supervisor or
    a hang it cannot repair must starve systemd's watchdog rather than be vouched for."""

    interval: float
    last: float = float("-inf")

    def due(self, now: float) -> bool:
        return now - self.last >= self.interval

    def sent(self, now: float) -> None:
        self.last = now


def fit_probe_to_watchdog(interval: float, timeout: float, watchdog: float) -> tuple[float, float]:
    """Shrink the probe's interval and timeout (keeping their ratio) so that interval + timeout stays within
    a third of systemd's WatchdogSec: supervise then finds, kills and replaces a hung serve, and pings again,
    before systemd's watchdog would restart the whole unit over it."""
    budget = watchdog / 3
    if interval + timeout <= budget:
        return interval, timeout
    scale = budget / (interval + timeout)
    return interval * scale, timeout * scale


def status_line(daemon_pid: int | None, healthy: int, total: int, restarts: int, last_recovery_ms: float | None) -> str:
    """The one-line STATUS= systemd shows in `systemctl status`."""
    pid = str(daemon_pid) if daemon_pid else "none"
    rec = f"{last_recovery_ms:.0f} ms" if last_recovery_ms is not None else "n/a"
    return f"serve pid {pid}, containers {healthy}/{total} healthy, restarts {restarts}, last recovery {rec}"
