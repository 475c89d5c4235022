"""sd_notify for `serve` and `supervise` alike. A no-op without NOTIFY_SOCKET (systemd-python's own
behaviour), so the same code runs under systemd, under `supervise` and by hand."""

from __future__ import annotations

import os


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", "WATCHDOG=1", "STATUS=...") to the service manager, if any."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    from systemd import daemon  # imported lazily: only needed under a service manager

    return bool(daemon.notify(state))


def watchdog_usec() -> int | None:
    """The WatchdogSec= systemd gave us, if it is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec)
