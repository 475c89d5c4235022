"""`lxcfs-guard supervise`: keep a FUSE daemon serving, and keep every container bound to it.

One single-threaded process, one poll loop (the remount engine forks its own children and `setns`
needs a single-threaded process). Everything it waits for is an fd:
- a pidfd per daemon instance (readable the moment it exits: a crash is seen at once),
- a probe child's pidfd (the health read runs in a child, with a deadline: a hung read blocks only it),
- an sd_notify socket per instance (READY=1 from `serve`),
- the signal wake-up fd (SIGHUP: zero-downtime restart; SIGTERM/SIGINT: stop),
- the proc connector (pyroute2): registered containers' exits, to unregister them.

Layout: every instance mounts on a private mountpoint under `{state_dir}/instances/`; the host mountpoint
holds a clone of the current primary's mount (`publish`). Faults:
- primary exits -> (hot standby ready? promote it : start a new instance) -> repair containers onto it,
  swap the host mountpoint -> start a new standby;
- probe times out (hang) -> abort the connection through fusectl, SIGKILL, then as above;
- SIGHUP -> start a new instance from the code installed now; when it answers, move every container onto
  it (stale_devs = the old connection), swap the host mountpoint, let in-flight reads finish, stop the old
  one. Nothing is ever dead in between, so a reader sees no failed read.
The status file (`status.py`) is rewritten on every change; sd_notify gets READY=1 only once the mount
answers and the first repair is done, WATCHDOG=1 only after a passing probe, and a one-line STATUS=.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from lxcfs_guard import config
from lxcfs_guard.kernel import notify, procfs, syscalls
from lxcfs_guard.remount.registry import FILENAME as REGISTRY_FILE
from lxcfs_guard.watchdog import fusectl, instance, policy, status
from lxcfs_guard.watchdog.instance import Instance
from lxcfs_guard.watchdog.probe import Outcome, Probe, ProbeResult, probe, reap_strays

LOCK_FILE = "supervise.lock"
STATUS_EVERY = 10.0  # seconds between periodic status/registry refreshes
MOUNT_POLL = 0.005  # seconds between mountinfo checks while an instance starts (for daemons without sd_notify)


def log(msg: str) -> None:
    print(f"lxcfs-guard supervise: {msg}", file=sys.stderr, flush=True)


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


# --- the engine, imported once up front (a crash is no time to pay for an import) -------------------


def _summary(report: Any) -> dict[str, Any]:
    broken = "; ".join([report.error or ""] + [ns.line().replace("\n", ",") for ns in report.namespaces if not ns.ok])
    return {"ok": bool(report.ok), "broken": broken.strip("; ")}


def _in_child(func: Any, timeout: float) -> dict[str, Any]:
    """Run `func` (returning a JSON-able dict) in a forked child and return its result. The child never
    returns into our code (os._exit on every path), and is killed if it outlives `timeout`."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(func()).encode())
            code = 0
        except BaseException:  # noqa: BLE001
            pass
        finally:
            os._exit(code)
    os.close(w)
    data, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    try:
        return json.loads(data)
    except ValueError:
        return {"ok": False, "broken": f"the repair child failed or timed out after {timeout:.0f} s"}


def _load_engine() -> Any:
    try:
        from lxcfs_guard.remount import engine
    except ImportError as e:
        log(f"remount engine not available ({e}): containers will not be repaired")
        return None
    return engine


class Supervisor:
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
                log(f"WatchdogSec={usec / 1e6:g}s: probing every {interval:.2f} s with a {timeout:.2f} s timeout, "
                    "so a hang of serve is handled here before systemd's watchdog fires")
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
        self._signals: list[int] = []
        self.started = time.time()

    # --- lifecycle --------------------------------------------------------------------------------

    def run(self) -> int:
        os.makedirs(self.o.state_dir, mode=0o755, exist_ok=True)
        lock = open(os.path.join(self.o.state_dir, LOCK_FILE), "a")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another supervise already runs on {self.o.state_dir}")
            return 2
        os.makedirs(os.path.dirname(self.mountpoint), exist_ok=True)
        with contextlib.suppress(FileExistsError):  # not makedirs: a dead mount there fails its isdir()
            os.mkdir(self.mountpoint)
        instance.prepare_instances_root(self.o.state_dir)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        from lxcfs_guard.watchdog.procevents import open_events

        self.events = open_events()
        if self.events is None:
            log("proc connector unavailable: container exits are noticed by the periodic registry check")
        try:
            self._adopt_or_start()
            self._loop(wake_r)
        finally:
            self._shutdown()
            if self.events is not None:
                self.events.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in handlers.items():
                signal.signal(s, h)
            wake_r.close()
            wake_w.close()
            lock.close()
        return self.exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _loop(self, wake: socket.socket) -> None:
        while not self.stopping:
            fds: dict[int, Any] = {wake.fileno(): "signal"}
            for inst in self._instances():
                if inst.pidfd >= 0:
                    fds[inst.pidfd] = ("exit", inst)
                if inst.notify is not None and not inst.ready:
                    fds[inst.notify.fileno()] = ("notify", inst)
                p = inst.probe
                if p is not None and p.fileno() >= 0:
                    fds[p.fileno()] = ("probe", inst)
            if self.events is not None:
                fds[self.events.fileno()] = "events"
            timeout = max(0.0, self._next_deadline() - time.monotonic())
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                ready = poller.poll(timeout * 1000)
            except InterruptedError:
                ready = []
            for fd, _ in ready:
                what = fds.get(fd)
                if what == "signal":
                    with contextlib.suppress(BlockingIOError):
                        while wake.recv(4096):
                            pass
                elif what == "events":
                    self._on_proc_events()
                elif isinstance(what, tuple):
                    kind, inst = what
                    if kind == "exit" and inst.reap():
                        self._on_exit(inst)
                    elif kind == "notify" and inst.drain_notify():
                        self.mount_poll_at = 0.0  # check the mount now
            self._handle_signals()
            self._tick(time.monotonic())

    def _instances(self) -> list[Instance]:
        return [i for i in (self.primary, self.standby, self.next) if i is not None] + self.retiring

    def _next_deadline(self) -> float:
        now = time.monotonic()
        times = [now + 1.0, self.refresh_at]
        if self.primary is not None:
            times.append(self.probe_at)
        for inst in self._instances():
            p = inst.probe
            if p is not None:
                times.append(p.deadline)
            if not inst.ready and inst.role != "old":
                if inst.dev is None:
                    times.append(self.mount_poll_at)
                elif p is None:
                    times.append(inst.probe_after)
                times.append(inst.launched + self.o.start_timeout)
            if inst.retire_at is not None:
                times.append(inst.retire_at)
        for t in (self.next_at, self.standby_at):
            if t is not None:
                times.append(t)
        return min(times)

    # --- signals ------------------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGHUP:
                self._request_reload()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                log(f"{signal.Signals(sig).name}: stopping")
                notify.notify("STOPPING=1")
                self.stopping = True

    def _request_reload(self) -> None:
        if self.primary is None or (self.next is not None and self.next_reason == "reload"):
            log("SIGHUP: a start or reload is already in progress; the new instance runs the installed code")
            return
        log("SIGHUP: zero-downtime restart onto a new instance")
        notify.notify("RELOADING=1")
        self.reload_pending = True
        if self.next is not None:  # a restart in progress already uses the new code
            return
        self._launch_next("reload")

    # --- timers -------------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        reap_strays()
        if self.next is None and self.next_at is not None and now >= self.next_at:
            self.next_at = None
            self._launch_next(self.next_reason)
        if self.o.standby and self.standby is None and self.standby_at is not None and now >= self.standby_at:
            self.standby_at = None
            self._launch_standby()
        for inst in [i for i in (self.next, self.standby) if i is not None and not i.ready]:
            self._advance_start(inst, now)
        for inst in self._instances():
            p = inst.probe
            if p is not None:
                self._check_probe(inst, p, now)
        if self.primary is not None and now >= self.probe_at and self.primary.probe is None:
            self.probe_at = now + self.o.probe_interval
            self._ensure_published()
            self._start_probe(self.primary)
            if self.standby is not None and self.standby.ready and self.standby.probe is None:
                self._start_probe(self.standby)
        for inst in list(self.retiring):
            self._advance_retire(inst, now)
        if now >= self.refresh_at:
            self.refresh_at = now + STATUS_EVERY
            self._refresh_registry()
            self._count_containers()
            self._write_status()

    def _advance_start(self, inst: Instance, now: float) -> None:
        if now - inst.launched > self.o.start_timeout:
            log(f"{inst.role} pid {inst.pid} did not answer within {self.o.start_timeout:.0f} s: killing it")
            inst.kill()
            self._on_exit(inst)
            return
        if inst.dev is None and (now >= self.mount_poll_at or inst.drain_notify()):
            self.mount_poll_at = now + MOUNT_POLL
            inst.dev = inst.find_mount()
        if inst.dev is not None and inst.probe is None and now >= inst.probe_after:
            self._start_probe(inst)

    def _start_probe(self, inst: Instance) -> None:
        inst.probe = Probe(os.path.join(inst.mnt, self.o.probe_file), self.o.probe_timeout)

    def _check_probe(self, inst: Instance, p: Probe, now: float) -> None:
        result = p.result()
        if result is None and not p.expired(now):
            return
        if result is None:  # deadline passed: the daemon hangs. Abort first, so the child is released.
            if inst.dev is not None:
                fusectl.abort(inst.dev)
            result = p.cancel()
        inst.probe = None
        if not inst.ready:
            if result.ok:
                self._on_ready(inst)
            elif result.outcome is Outcome.TIMEOUT:
                log(f"{inst.role} pid {inst.pid} hangs while starting: killing it")
                inst.kill()
                self._on_exit(inst)
            else:  # an error while starting (mount not fully up yet): probe again shortly
                inst.probe_after = now + 0.02
            return
        if result.ok:
            if inst is self.primary:
                self._healthy(True)
            return
        kind = "hang" if result.outcome is Outcome.TIMEOUT else "broken"
        log(f"{inst.role} pid {inst.pid} failed its probe ({result.describe()}): {kind}; killing it")
        if inst.dev is not None:
            fusectl.abort(inst.dev)
        if inst is self.primary:
            self.fault_at, self.fault_kind = now, kind
        inst.kill()
        self._on_exit(inst)

    def _advance_retire(self, inst: Instance, now: float) -> None:
        if inst.retire_at is not None and now >= inst.retire_at:
            inst.retire_at = None
            if inst.alive():
                inst.send(signal.SIGCONT)
                inst.send(signal.SIGTERM)
                inst.kill_at = now + self.o.stop_timeout
            else:
                self._drop_retired(inst)
        if inst.kill_at is not None and now >= inst.kill_at and inst.exit_status is None:
            inst.kill()
            self._drop_retired(inst)

    def _drop_retired(self, inst: Instance) -> None:
        inst.cleanup()
        if inst in self.retiring:
            self.retiring.remove(inst)
        self._write_status()

    # --- starting -----------------------------------------------------------------------------------

    def _launch(self, role: str) -> Instance:
        inst = instance.launch(role, self.command, self.o.state_dir, self.o.fstype)
        inst.probe = None
        self.mount_poll_at = 0.0
        return inst

    def _launch_next(self, reason: str) -> None:
        self.next_reason = reason
        try:
            self.next = self._launch("next")
        except OSError as e:
            log(f"cannot start the daemon: {e}")
            self.backoff.failed_before_ready()
            self.next_at = time.monotonic() + max(self.backoff.next_delay(), 0.1)
            return
        log(f"started instance pid {self.next.pid} ({reason}) on {self.next.mnt}")
        self._write_status()

    def _launch_standby(self) -> None:
        try:
            self.standby = self._launch("standby")
        except OSError as e:
            log(f"cannot start the standby: {e}")
            self.standby_backoff.failed_before_ready()
            self.standby_at = time.monotonic() + max(self.standby_backoff.next_delay(), 0.1)
            return
        self._write_status()

    def _on_ready(self, inst: Instance) -> None:
        inst.ready = True
        inst.ready_at = time.monotonic()
        if inst is self.standby:
            self.standby_backoff.became_ready()
            log(f"standby pid {inst.pid} ready on {inst.mnt}")
            self._write_status()
            return
        if inst is not self.next:
            return
        self.next = None
        self.backoff.became_ready()
        if self.next_reason == "reload" and self.primary is not None:
            self._complete_reload(inst)
        else:
            self._promote(inst)

    def _promote(self, inst: Instance, reload_from: Instance | None = None) -> None:
        """Make `inst` the primary. Containers first (they are what is waiting): the registered ones, then
        any other bind of the same connections found by discovery; then the host mountpoint; only then are
        the dead instances' private mounts let go (see `_stale_devs`)."""
        inst.role = "primary"
        self.primary = inst
        stale = self._stale_devs(reload_from)
        t0 = time.monotonic()
        fast = 0.0
        if stale:
            self._refresh_registry()
            fast = self._repair(inst, stale, ids=sorted(cid for cid, _ in self.registered.values()))
            if self.fault_at is None:  # (after a fault the recovery line says it; keep that path quiet)
                log(f"moved containers off {', '.join(sorted(f'{os.major(d)}:{os.minor(d)}' for d in stale))}")
        if self.fault_at is not None:
            now = time.monotonic()
            self.last_recovery_ms = (now - self.fault_at) * 1000
            ready = inst.ready_at or t0
            log(
                f"recovered from {self.fault_kind} in {self.last_recovery_ms:.1f} ms (serve pid {inst.pid}: "
                f"{'standby' if inst.launched < self.fault_at else f'started in {(ready - inst.launched) * 1000:.0f} ms'}"
                f", registered containers repaired in {fast:.1f} ms)"
            )
            self.fault_at = None
        if stale:
            self._repair(inst, stale)  # discovered (unregistered) binds of the same connections
        self._publish(inst)
        for dead in self.dead:
            dead.cleanup()
        self.dead = []
        now = time.monotonic()
        self.probe_at = now + self.o.probe_interval
        self._healthy(True, force_status=True)
        if not self.announced_ready:
            self.announced_ready = True
            notify.notify(f"READY=1\nMAINPID={os.getpid()}")
            log(f"ready: serve pid {inst.pid}, {self.mountpoint} -> {inst.mnt}")
        elif self.reload_pending and self.next is None:  # a reload overtaken by a crash ends here
            self.reload_pending = False
            notify.notify("READY=1")
        if self.o.standby and self.standby is None and self.standby_at is None:
            self.standby_at = now

    def _stale_devs(self, reload_from: Instance | None) -> set[int]:
        """The connections containers must be moved off: only ever our own. Dead instances' devices (their
        private mounts are still held, so the kernel cannot hand the same anonymous device number to some
        other FUSE filesystem meanwhile), what was dead on the host mountpoint at start, and on a reload
        the old, still answering, instance. Never "every dead connection on the host": another daemon's
        containers (another lxcfs-guard, a test running beside us) are not ours to move; `remount --all`
        (ExecStartPost) is the explicit, host-wide repair."""
        stale = {d.dev for d in self.dead if d.dev is not None} | self.start_stale
        if reload_from is not None and reload_from.dev is not None:
            stale.add(reload_from.dev)
        self.start_stale = set()
        if self.primary is not None and self.primary.dev is not None:
            stale.discard(self.primary.dev)
        return stale

    def _complete_reload(self, new: Instance) -> None:
        old = self.primary
        assert old is not None
        self._promote(new, reload_from=old)
        old.role = "old"
        old.retire_at = time.monotonic() + self.o.reload_grace
        self.retiring.append(old)
        if self.standby is not None:  # the standby runs the old code too: replace it
            sb, self.standby = self.standby, None
            sb.role = "old"
            sb.retire_at = time.monotonic()
            self.retiring.append(sb)
            self.standby_at = time.monotonic()
        self.reload_pending = False
        log(f"reload done: serve pid {new.pid} serves, old pid {old.pid} retires in {self.o.reload_grace:.1f} s")
        notify.notify("READY=1")
        self._write_status()

    # --- exits --------------------------------------------------------------------------------------

    def _on_exit(self, inst: Instance) -> None:
        now = time.monotonic()
        if inst.probe is not None:
            inst.probe.cancel(wait=0.2)
            inst.probe = None
        if inst in self.retiring:
            self._drop_retired(inst)
            return
        if inst is self.primary:
            self.primary = None
            self.dead.append(inst)  # its private mount is let go once its containers are repaired
            self._healthy(False)
            if self.fault_at is None:
                self.fault_at, self.fault_kind = now, "crash"
            self.restarts += 1
            self.crash_loop.record(now)
            log(f"serve pid {inst.pid} is gone ({self.fault_kind}, status {inst.exit_status}); restart {self.restarts}")
            if self.crash_loop.exceeded(now):
                log(f"more than {self.o.max_restarts} restarts in {self.o.restart_window:.0f} s: giving up")
                self.exit_code = 1
                self.stopping = True
                return
            self._recover()
        elif inst is self.standby:
            self.standby = None
            if not inst.ready:
                self.standby_backoff.failed_before_ready()
            log(f"standby pid {inst.pid} is gone; starting another")
            inst.cleanup()
            self.standby_at = now + self.standby_backoff.next_delay()
        elif inst is self.next:
            self.next = None
            inst.cleanup()
            self.backoff.failed_before_ready()
            self.crash_loop.record(now)
            delay = self.backoff.next_delay()
            log(f"new instance pid {inst.pid} exited before answering (status {inst.exit_status}); retry in {delay:.1f} s")
            if self.next_reason == "reload" and self.primary is not None:
                log("reload abandoned: the running instance keeps serving")
                self.reload_pending = False
                notify.notify("READY=1")
                return
            if self.crash_loop.exceeded(now):
                log(f"more than {self.o.max_restarts} failed starts in {self.o.restart_window:.0f} s: giving up")
                self.exit_code = 1
                self.stopping = True
                return
            self.next_at = now + delay
        self._write_status()

    def _recover(self) -> None:
        """The primary is gone: promote the standby if it is ready, otherwise start a new instance at once
        (a standby still starting becomes that new instance: it is the furthest along)."""
        if self.standby is not None and self.standby.ready:
            sb, self.standby = self.standby, None
            self._promote(sb)
            return
        if self.standby is not None:
            self.next, self.standby = self.standby, None
            self.next.role = "next"
            self.next_reason = "crash"
        elif self.next is None:
            self.next_reason = "crash"
            self.next_at = time.monotonic() + self.backoff.next_delay()
            if self.next_at <= time.monotonic():
                self.next_at = None
                self._launch_next("crash")

    # --- mounts ---------------------------------------------------------------------------------------

    def _repair(self, inst: Instance, stale: set[int], ids: list[str] | None = None) -> float:
        """Run the remount engine onto `inst`; returns the time it took (ms). `stale` names our own
        connections to move off (`_stale_devs`), so the engine neither probes liveness nor touches others'.

        With `ids` (the registered containers: the fast pass, no scan of every process's mount table) it runs
        in this process: it is on the recovery path and bounded by our registry. Without (the host-wide
        discovery sweep) it runs in a forked child: its cost grows with everything running on the host, and
        whatever it allocates or breaks must not stay in the supervisor, whose footprint must stay flat."""
        if self.engine is None or ids == []:
            return 0.0
        t0 = time.monotonic()
        kwargs = dict(fstype=self.o.fstype, ids=ids, stale_devs=stale, timeout=self.o.remount_timeout, jobs=self.o.jobs)
        if ids is not None:
            try:
                result = _summary(self.engine.remount(inst.mnt, self.o.state_dir, **kwargs))
            except Exception as e:  # noqa: BLE001 - a failed repair must not take the supervisor down
                result = {"ok": False, "broken": repr(e)}
        else:
            result = _in_child(lambda: _summary(self.engine.remount(inst.mnt, self.o.state_dir, **kwargs)),
                               timeout=self.o.remount_timeout * 4 + 10)
        took = (time.monotonic() - t0) * 1000
        self.last_repair = {"ok": result["ok"], "ms": round(took, 1), "scope": "registered" if ids else "all"}
        if not result["ok"]:
            log(f"remount left something broken: {result['broken']}")
        return took

    def _publish(self, inst: Instance) -> None:
        """Put `inst`'s mount on the host mountpoint: atomically beneath whatever is there (a dead mount, or
        the previous instance's), so the host path is never empty; attached plainly if nothing is."""
        top = status.top_mount_dev(procfs.read_mountinfo("self"), self.mountpoint, self.o.fstype)
        if top is not None and top == inst.dev:
            return
        try:
            if self.engine is not None:
                self.engine.swap_mount(inst.mnt, self.mountpoint)
                return
            if top is not None:  # no engine: detach, then bind (the host path is briefly empty)
                syscalls.umount2(self.mountpoint, syscalls.MNT_DETACH)
            syscalls.mount(inst.mnt, self.mountpoint, None, syscalls.MS_BIND)
        except OSError as e:
            log(f"cannot put the mount on {self.mountpoint}: {e}")

    def _ensure_published(self) -> None:
        """Someone may have unmounted the host mountpoint by hand: put it back."""
        if self.primary is None or self.primary.dev is None:
            return
        top = status.top_mount_dev(procfs.read_mountinfo("self"), self.mountpoint, self.o.fstype)
        if top != self.primary.dev:
            log(f"{self.mountpoint} is not on the serving instance: mounting it again")
            self._publish(self.primary)

    # --- adoption (a previous supervisor died, its daemons may still serve) -------------------------

    def _adopt_or_start(self) -> None:
        """Take over what a previous supervisor left: daemons that still answer are adopted (containers never
        notice a supervisor restart), the rest is killed and its containers repaired onto the new primary."""
        rec = status.read_status(self.o.state_dir) or {}
        top = status.top_mount_dev(procfs.read_mountinfo("self"), self.mountpoint, self.o.fstype)
        known: set[str] = set()
        for record in rec.get("instances", []):
            if not isinstance(record, dict):
                continue
            role = record.get("role")
            inst = instance.adopt(str(role), record, self.o.fstype)
            if inst is None:  # gone: its directory (and dead mount, if any) is collected below
                continue
            known.add(inst.dir)
            result = self._probe_now(inst) if role in ("primary", "standby") and inst.dev is not None else None
            if result is not None and result.ok:
                inst.ready = True
                if role == "primary" and self.primary is None:
                    self.primary = inst
                    log(f"adopted serving pid {inst.pid} from the previous supervisor")
                    continue
                if role == "standby" and self.standby is None:
                    self.standby = inst
                    log(f"adopted standby pid {inst.pid}")
                    continue
            log(f"stopping left-over {role} pid {inst.pid} ({result.describe() if result else 'not adoptable'})")
            if inst.dev is not None:
                fusectl.abort(inst.dev)
            inst.kill()
            self.dead.append(inst)
        self.restarts = int(rec.get("restarts", 0) or 0)
        self._collect_unknown_instances(known)
        if top is not None:  # whatever of ours sits on the host mountpoint and is not adopted: dead or old
            self.start_stale.add(top)
        if self.primary is not None:
            self._promote(self.primary)
        elif self.standby is not None:
            sb, self.standby = self.standby, None
            self._promote(sb)
        else:
            self._launch_next("start")

    def _probe_now(self, inst: Instance) -> ProbeResult:
        return probe(os.path.join(inst.mnt, self.o.probe_file), self.o.probe_timeout)

    def _collect_unknown_instances(self, known: set[str]) -> None:
        """Instance directories the status file does not name (a supervisor killed between starting a
        daemon and recording it): their daemon is found by its mountpoint on its command line and killed,
        their mount is treated as a dead instance of ours."""
        root = instance.instances_root(self.o.state_dir)
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if path in known or not os.path.isdir(path):
                continue
            left = Instance(role="left", pid=0, start_time=-1, dir=path, fstype=self.o.fstype)
            for pid in instance.pids_serving(left.mnt):
                log(f"stopping unrecorded daemon pid {pid} on {left.mnt}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            left.dev = left.find_mount()
            log(f"left-over instance {name}: {'dead mount ' + left.dev_str if left.dev is not None else 'no mount'}")
            self.dead.append(left)

    # --- containers ---------------------------------------------------------------------------------

    def _refresh_registry(self) -> None:
        with contextlib.suppress(OSError):
            self.registry_mtime = os.stat(os.path.join(self.o.state_dir, REGISTRY_FILE)).st_mtime_ns
        entries = status.registered_containers(self.o.state_dir)
        self.registered = {pid: (cid, st) for cid, pid, st in entries}
        self._unregister({cid: (pid, st) for cid, pid, st in entries if st is not None and not status.alive(pid, st)})

    def _on_proc_events(self) -> None:
        assert self.events is not None
        exits = self.events.drain()
        try:
            changed = os.stat(os.path.join(self.o.state_dir, REGISTRY_FILE)).st_mtime_ns != self.registry_mtime
        except OSError:
            changed = False
        if -1 in exits or changed:  # events were lost, or containers were registered since: rescan
            self._refresh_registry()
        gone = {}
        for pid in exits:
            found = self.registered.pop(pid, None)
            if found is not None and found[1] is not None:
                gone[found[0]] = (pid, found[1])
        self._unregister(gone)

    def _unregister(self, gone: dict[str, tuple[int, int]]) -> None:
        """Forget containers whose init exited (only if the entry still names that very process)."""
        if not gone:
            return
        try:
            from lxcfs_guard.remount.registry import Registry

            removed = Registry(self.o.state_dir).remove_if(gone)
        except Exception as e:  # noqa: BLE001 - a registry problem must not take the supervisor down
            log(f"cannot unregister {sorted(gone)}: {e!r}")
            return
        for cid in removed:
            log(f"container {cid} exited: unregistered")
        if removed:
            self._count_containers()
            self._write_status()

    def _count_containers(self) -> None:
        live_dev = self.primary.dev if self.primary is not None else None
        states = status.container_states(status.registered_containers(self.o.state_dir), self.o.fstype, live_dev)
        self.containers_total = sum(1 for s in states if s.state != "gone")
        self.containers_live = sum(1 for s in states if s.state == "live")

    # --- health and reporting -----------------------------------------------------------------------

    def _healthy(self, ok: bool, force_status: bool = False) -> None:
        changed = ok != self.healthy
        self.healthy = ok
        now = time.monotonic()
        if ok and self.pinger is not None and self.pinger.due(now):
            notify.notify("WATCHDOG=1")
            self.pinger.sent(now)
        if changed or force_status:
            if ok:
                self._count_containers()
            self._write_status()

    def _write_status(self) -> None:
        p = self.primary
        data = {
            "mode": "supervise",
            "supervisor_pid": os.getpid(),
            "supervisor_start_time": procfs.pid_start_time(os.getpid()),
            "daemon_pid": p.pid if p is not None else None,
            "daemon_mountpoint": p.mnt if p is not None else None,
            "dev": p.dev_str if p is not None else None,
            "standby_pid": self.standby.pid if self.standby is not None and self.standby.ready else None,
            "mountpoint": self.mountpoint,
            "fstype": self.o.fstype,
            "healthy": self.healthy and p is not None,
            "restarts": self.restarts,
            "last_recovery_ms": None if self.last_recovery_ms is None else round(self.last_recovery_ms, 1),
            "last_fault": self.fault_kind or None,
            "last_repair": self.last_repair,
            "containers_total": self.containers_total,
            "containers_live": self.containers_live,
            "instances": [dict(i.to_json(), role=i.role) for i in self._instances()],
            "started": self.started,
            "updated": time.time(),
        }
        with contextlib.suppress(OSError):
            status.write_status(self.o.state_dir, data)
        notify.notify(
            "STATUS="
            + policy.status_line(
                data["daemon_pid"], self.containers_live, self.containers_total, self.restarts, self.last_recovery_ms
            )
        )

    # --- stop ---------------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop every instance we own and take our mount off the host mountpoint. Containers' binds are left
        as they are: they are repaired when the service starts again."""
        devs = {i.dev for i in self._instances() if i.dev is not None}
        for inst in self._instances():
            p = inst.probe
            if p is not None:
                p.cancel(wait=0.2)
            inst.stop(self.o.stop_timeout)
        for dead in self.dead:
            dead.cleanup()
        self.primary = self.standby = self.next = None
        self.retiring, self.dead = [], []
        for _ in range(4):
            top = status.top_mount_dev(procfs.read_mountinfo("self"), self.mountpoint, self.o.fstype)
            if top is None or top not in devs:
                break
            with contextlib.suppress(OSError):
                syscalls.umount2(self.mountpoint, syscalls.MNT_DETACH)
        self.healthy = False
        self._write_status()
        root = instance.instances_root(self.o.state_dir)
        with contextlib.suppress(OSError):
            syscalls.umount2(root, syscalls.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(root)


# --- the command ----------------------------------------------------------------------------------


def configure_supervise(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mountpoint", default=config.default_mountpoint(), help="host mountpoint (default: %(default)s)")
    parser.add_argument("--state-dir", default=config.default_state_dir(), help="state directory (default: %(default)s)")
    parser.add_argument(
        "--exec",
        dest="command",
        default="",
        metavar="CMD",
        help="guard another FUSE daemon instead of `serve`: a command line with {mountpoint} "
        "(also {state_dir}, {instance_dir}); with --standby every instance needs its own pidfile, e.g. "
        "'lxcfs -p {instance_dir}/lxcfs.pid {mountpoint}' --fstype fuse.lxcfs",
    )
    parser.add_argument("--fstype", default=Options.fstype, help="FUSE type of the guarded mount (default: %(default)s)")
    parser.add_argument("--serve-args", default="", help="extra arguments for `serve` (one string)")
    parser.add_argument("--workers", type=int, default=0, help="serving processes per `serve` (default: serve's)")
    parser.add_argument(
        "--standby", action=argparse.BooleanOptionalAction, default=Options.standby,
        help="keep a second daemon mounted privately to take over at once after a crash (default: on)",
    )
    parser.add_argument("--probe-interval", type=float, default=Options.probe_interval,
                        help="seconds between health probes (default: %(default)s)")
    parser.add_argument("--probe-timeout", type=float, default=Options.probe_timeout,
                        help="a probe read slower than this is a hang (default: %(default)s)")
    parser.add_argument("--probe-file", default=Options.probe_file, help="file read by the probe, relative to the mount")
    parser.add_argument("--start-timeout", type=float, default=Options.start_timeout, help="seconds a new daemon has to answer")
    parser.add_argument("--max-restarts", type=int, default=Options.max_restarts, help="give up after this many restarts ... (0: never)")
    parser.add_argument("--restart-window", type=float, default=Options.restart_window, help="... within this many seconds")
    parser.add_argument("--reload-grace", type=float, default=Options.reload_grace, help="seconds the old daemon keeps serving in-flight reads on reload")
    parser.add_argument("--remount-timeout", type=float, default=Options.remount_timeout, help="per-container repair timeout")
    parser.add_argument("--jobs", type=int, default=Options.jobs, help="parallel repair workers (default: the engine's)")


def run_supervise(args: argparse.Namespace) -> int:
    import faulthandler

    faulthandler.enable()  # systemd's watchdog sends SIGABRT first: leave the stuck stack in the journal
    command = args.command
    if not command:
        serve_args = args.serve_args + (f" --workers {args.workers}" if args.workers else "")
        command = instance.default_command(args.state_dir, serve_args.strip())
    elif "{mountpoint}" not in command:
        print("lxcfs-guard supervise: --exec needs {mountpoint} in the command", file=sys.stderr)
        return 2
    opts = Options(
        mountpoint=args.mountpoint,
        state_dir=os.path.abspath(args.state_dir),
        fstype=args.fstype,
        command=command,
        standby=args.standby,
        probe_interval=args.probe_interval,
        probe_timeout=args.probe_timeout,
        probe_file=args.probe_file,
        start_timeout=args.start_timeout,
        max_restarts=args.max_restarts,
        restart_window=args.restart_window,
        reload_grace=args.reload_grace,
        remount_timeout=args.remount_timeout,
        jobs=args.jobs,
    )
    return Supervisor(opts).run()
