"""Succession: starting instances, promoting one to primary (containers first, then the host mountpoint),
completing a reload, and reacting to an instance's exit (promote the standby, or start a new one)."""

from __future__ import annotations

import os
import time

from lxcfs_guard.kernel import notify
from lxcfs_guard.watchdog import instance
from lxcfs_guard.watchdog.instance import Instance, Role
from lxcfs_guard.watchdog.supervisor_state import SupervisorState, log


class Failover(SupervisorState):
    def _launch(self, role: Role) -> Instance:
        inst = instance.launch(role, self.command, self.o.state_dir, self.o.fstype)
        inst.probe = None
        self.mount_poll_at = 0.0
        return inst

    def _launch_next(self, reason: str) -> None:
        self.next_reason = reason
        try:
            self.next = self._launch(Role.NEXT)
        except OSError as e:
            log(f"cannot start the daemon: {e}")
            self.backoff.failed_before_ready()
            self.next_at = time.monotonic() + max(self.backoff.next_delay(), 0.1)
            return
        log(f"started instance pid {self.next.pid} ({reason}) on {self.next.mnt}")
        self._write_status()

    def _launch_standby(self) -> None:
        try:
            self.standby = self._launch(Role.STANDBY)
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
        """Make `inst` the primary. The host mountpoint first: new containers and host readers need nothing
        else, and no container can hold it up. Then the containers, in a repair child the loop watches
        (`Tracking._start_repair`); the dead instances' private mounts go when it is done (`_stale_devs`)."""
        if self.repair is not None:  # it was moving containers onto an instance that is not primary now
            self._cancel_repair("superseded: another instance is primary now")
        inst.role = Role.PRIMARY
        self.primary = inst
        stale = self._stale_devs(reload_from)
        self._publish(inst)
        now = time.monotonic()
        self.probe_at = now + self.o.probe_interval
        retire = [reload_from] if reload_from is not None else []
        if stale:
            self._refresh_registry()
            self._start_repair(inst, stale, sorted(cid for cid, _ in self.registered.values()), retire)
        else:
            self.repair_context = {"inst": inst, "fault_at": self.fault_at, "fault_kind": self.fault_kind}
            self.fault_at = None
            self._repair_finished(None, retire)
        self._healthy(True, force_status=True)
        if self.o.standby and self.standby is None and self.standby_at is None:
            self.standby_at = now

    def _after_first_repair(self) -> None:
        """READY=1 once the mount answers and the first repair is done (or given up on)."""
        p = self.primary
        if not self.announced_ready and p is not None:
            self.announced_ready = True
            notify.notify(f"READY=1\nMAINPID={os.getpid()}")
            log(f"ready: serve pid {p.pid}, {self.mountpoint} -> {p.mnt}")
        elif self.reload_pending and self.next is None:  # a reload overtaken by a crash ends here
            self.reload_pending = False
            notify.notify("READY=1")

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
        old.role = Role.OLD  # its grace period starts once the containers are off it (Tracking._repair_finished)
        self.retiring.append(old)
        self._promote(new, reload_from=old)
        if self.standby is not None:  # the standby runs the old code too: replace it
            sb, self.standby = self.standby, None
            sb.role = Role.OLD
            sb.retire_at = time.monotonic()
            self.retiring.append(sb)
            self.standby_at = time.monotonic()
        self.reload_pending = False
        log(
            f"reload done: serve pid {new.pid} serves, old pid {old.pid} retires {self.o.reload_grace:.1f} s "
            "after the containers are moved"
        )
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
            log(
                f"new instance pid {inst.pid} exited before answering (status {inst.exit_status}); "
                f"retry in {delay:.1f} s"
            )
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
            self.next.role = Role.NEXT
            self.next_reason = "crash"
        elif self.next is None:
            self.next_reason = "crash"
            self.next_at = time.monotonic() + self.backoff.next_delay()
            if self.next_at <= time.monotonic():
                self.next_at = None
                self._launch_next("crash")
