"""The supervisor's poll loop: what it waits on (pidfds, sd_notify sockets, probe children, the signal
wake-up fd, the proc connector), the signals it honours, and the timers it advances on every turn."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

from lxcfs_guard.kernel import notify
from lxcfs_guard.watchdog import fusectl
from lxcfs_guard.watchdog.instance import Instance, Role
from lxcfs_guard.watchdog.probe import Outcome, Probe, reap_strays
from lxcfs_guard.watchdog.supervisor_state import MOUNT_POLL, STATUS_EVERY, SupervisorState, log


class Loop(SupervisorState):
    def _guarded(self, what: str, func: Callable[..., Any], *args: Any) -> None:
        """Run one piece of bookkeeping. An exception there is a bug of ours (or input nobody foresaw): it is
        logged with its traceback and the loop goes on. Whatever the supervisor gets wrong, `serve` keeps
        serving and the host mountpoint stays published; only a clean stop takes them down."""
        try:
            func(*args)
        except Exception:  # noqa: BLE001 - see above: never let bookkeeping reach the data path
            self.internal_errors += 1
            log(f"internal error in {what} (carrying on):", traceback=traceback.format_exc())

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
            if self.repair is not None and self.repair.fileno() >= 0:
                fds[self.repair.fileno()] = "repair"
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
                elif what == "repair":
                    self._guarded("repair output", self._on_repair_output)
                elif what == "events":
                    self._guarded("proc events", self._on_proc_events)
                elif isinstance(what, tuple):
                    self._guarded(f"{what[0]} of an instance", self._on_ready_fd, *what)
            self._guarded("signals", self._handle_signals)
            self._tick(time.monotonic())

    def _on_ready_fd(self, kind: str, inst: Instance) -> None:
        if kind == "exit" and inst.reap():
            self._on_exit(inst)
        elif kind == "notify" and inst.drain_notify():
            self.mount_poll_at = 0.0  # check the mount now

    def _next_deadline(self) -> float:
        now = time.monotonic()
        times = [now + 1.0, self.refresh_at]
        if self.repair is not None:
            times.append(self.repair.deadline)
        if self.primary is not None:
            times.append(self.probe_at)
        for inst in self._instances():
            p = inst.probe
            if p is not None:
                times.append(p.deadline)
            if not inst.ready and inst.role is not Role.OLD:
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
        """Each step guarded on its own: a bug in one (say the registry refresh) must not stop the others
        (the probe, the restart of a dead daemon)."""
        for step in (self._tick_starts, self._tick_probes, self._check_repair, self._tick_retire, self._tick_refresh):
            self._guarded(step.__name__.lstrip("_"), step, now)

    def _tick_starts(self, now: float) -> None:
        reap_strays()
        if self.next is None and self.next_at is not None and now >= self.next_at:
            self.next_at = None
            self._launch_next(self.next_reason)
        if self.o.standby and self.standby is None and self.standby_at is not None and now >= self.standby_at:
            self.standby_at = None
            self._launch_standby()
        for inst in [i for i in (self.next, self.standby) if i is not None and not i.ready]:
            self._advance_start(inst, now)

    def _tick_probes(self, now: float) -> None:
        for inst in self._instances():
            p = inst.probe
            if p is not None:
                self._check_probe(inst, p, now)
        if self.primary is not None and now >= self.probe_at and self.primary.probe is None:
            self.probe_at = now + self.o.probe_interval
            self._guarded("publishing", self._ensure_published)
            self._start_probe(self.primary)
            if self.standby is not None and self.standby.ready and self.standby.probe is None:
                self._start_probe(self.standby)

    def _tick_retire(self, now: float) -> None:
        for inst in list(self.retiring):
            self._advance_retire(inst, now)

    def _tick_refresh(self, now: float) -> None:
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
