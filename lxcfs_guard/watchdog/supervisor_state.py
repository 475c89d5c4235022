"""What every part of the supervisor shares: its options, its log line, and the state of one `supervise`
run (the instances by role, timers, counters). The parts (`loop`, `failover`, `tracking`, `adoption`,
`publishing`) are mixins over this state, assembled into one `Supervisor` in `supervise.py`: one
single-threaded process, one poll loop, so they share state without locks."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxcfs_guard import config
from lxcfs_guard.kernel import notify
from lxcfs_guard.text import printable
from lxcfs_guard.watchdog import instance, policy, status
from lxcfs_guard.watchdog.instance import Instance

if TYPE_CHECKING:
    from lxcfs_guard.watchdog.procevents import ProcEvents
    from lxcfs_guard.watchdog.repair import RepairJob

LOCK_FILE = "supervise.lock"
STATUS_EVERY = 10.0  # seconds between periodic status/registry refreshes
MOUNT_POLL = 0.005  # seconds between mountinfo checks while an instance starts (for daemons without sd_notify)


def log(msg: str, *, traceback: str = "") -> None:
    """One line on stderr (the journal). Escaped (`text.printable`): container ids and paths in it are not
    ours, and must neither forge another line nor crash a strict stream. A `traceback` (ours) follows,
    indented, each of its lines escaped too."""
    tail = "".join("\n  " + printable(line) for line in traceback.strip().split("\n") if line)
    print(f"lxcfs-guard supervise: {printable(msg)}{tail}", file=sys.stderr, flush=True)


@dataclass
class Options:
    mountpoint: str
    state_dir: str
    fstype: str = config.FSTYPE
    command: str = ""  # template with {mountpoint}; empty = our own `serve`
    standby: bool = True
    probe_interval: float = 1.0
    probe_timeout: float = 2.0
    probe_file: str = "proc/uptime"
    start_timeout: float = 10.0
    max_restarts: int = 10
    restart_window: float = 60.0
    reload_grace: float = 1.0
    stop_timeout: float = 3.0
    remount_timeout: float = 5.0
    jobs: int | None = None


def _load_engine() -> Any:
    """The remount engine, imported once up front (a crash is no time to pay for an import)."""
    try:
        from lxcfs_guard.remount import engine, live  # noqa: F401 - live: swap_mount, used by publishing
    except ImportError as e:
        log(f"remount engine not available ({e}): containers will not be repaired")
        return None
    return engine


class SupervisorState:
    events: ProcEvents | None  # set by Supervisor.run (the proc connector, or None without one)

    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.mountpoint = status.mountpoint_path(opts.mountpoint)
        self.command = opts.command or instance.default_command(opts.state_dir)
        self.engine = _load_engine()
        self.primary: Instance | None = None
        self.standby: Instance | None = None
        self.next: Instance | None = None  # becoming primary (first start, restart, reload)
        self.next_reason = "start"
        self.retiring: list[Instance] = []
        self.backoff = policy.Backoff()
        self.standby_backoff = policy.Backoff()
        self.crash_loop = policy.CrashLoop(opts.max_restarts, opts.restart_window)
        usec = notify.watchdog_usec()
        self.pinger = None
        if usec:
            self.pinger = policy.WatchdogPinger(usec / 4e6)
            interval, timeout = policy.fit_probe_to_watchdog(opts.probe_interval, opts.probe_timeout, usec / 1e6)
            if (interval, timeout) != (opts.probe_interval, opts.probe_timeout):
                log(
                    f"WatchdogSec={usec / 1e6:g}s: probing every {interval:.2f} s with a {timeout:.2f} s timeout, "
                    "so a hang of serve is handled here before systemd's watchdog fires"
                )
                opts.probe_interval, opts.probe_timeout = interval, timeout
        self.next_at: float | None = None  # when to launch `next` (backoff)
        self.standby_at: float | None = None
        self.probe_at = 0.0
        self.mount_poll_at = 0.0
        self.refresh_at = 0.0
        self.fault_at: float | None = None
        self.fault_kind = ""
        self.reload_pending = False
        self.restarts = 0
        self.last_recovery_ms: float | None = None
        self.last_repair: dict[str, Any] | None = None
        self.healthy = False
        self.announced_ready = False
        self.containers_total = 0
        self.containers_live = 0
        self.registered: dict[int, tuple[str, int | None]] = {}  # container init pid -> (id, start time)
        self.registry_mtime = 0
        self.dead: list[Instance] = []  # dead instances whose containers are not repaired yet
        self.start_stale: set[int] = set()  # our dead connections found at start
        self.stopping = False
        self.exit_code = 0
        self.repair: Any = None  # the RepairJob in flight (repair.py), if any
        self.repair_context: dict[str, Any] = {}  # what to do when it ends (Tracking._repair_finished)
        self.internal_errors = 0  # bugs of ours caught by Loop._guarded (also in the status file)
        self._signals: list[int] = []
        self.started = time.time()

    def _instances(self) -> list[Instance]:
        return [i for i in (self.primary, self.standby, self.next) if i is not None] + self.retiring

    if TYPE_CHECKING:
        # What the parts call on each other through `self`; each is defined by one part (named here) and
        # the whole exists only in `Supervisor`. Declared for the type checker alone: at run time the
        # parts' own methods are the only ones.
        # failover
        def _launch_next(self, reason: str) -> None: ...
        def _launch_standby(self) -> None: ...
        def _on_ready(self, inst: Instance) -> None: ...
        def _promote(self, inst: Instance, reload_from: Instance | None = None) -> None: ...
        def _after_first_repair(self) -> None: ...
        def _on_exit(self, inst: Instance) -> None: ...
        # tracking
        def _start_repair(self, inst: Instance, stale: set[int], ids: list[str], retire: list[Instance]) -> None: ...
        def _on_repair_output(self) -> None: ...
        def _check_repair(self, now: float) -> None: ...
        def _cancel_repair(self, why: str) -> None: ...
        def _repair_finished(self, job: RepairJob | None, retire: list[Instance]) -> None: ...
        def _refresh_registry(self) -> None: ...
        def _on_proc_events(self) -> None: ...
        def _count_containers(self) -> None: ...
        # publishing
        def _publish(self, inst: Instance) -> None: ...
        def _ensure_published(self) -> None: ...
        def _healthy(self, ok: bool, force_status: bool = False) -> None: ...
        def _write_status(self) -> None: ...
        # loop
        def _drop_retired(self, inst: Instance) -> None: ...
