"""Container tracking: the registered containers (the registry, their exits from the proc connector,
their live/stale counts) and the repair pass that moves them onto the serving instance."""

from __future__ import annotations

import contextlib
import os
import time

from lxcfs_guard.remount.registry import FILENAME as REGISTRY_FILE
from lxcfs_guard.watchdog import repair, status
from lxcfs_guard.watchdog.instance import Instance
from lxcfs_guard.watchdog.supervisor_state import SupervisorState, log


class Tracking(SupervisorState):
    def _start_repair(self, inst: Instance, stale: set[int], ids: list[str], retire: list[Instance]) -> None:
        """Move containers off `stale` (our own connections, `_stale_devs`, so the engine neither probes
        liveness nor touches others') onto `inst`, in a child (`repair.py`): first the registered containers
        `ids`, then every other bind of the same connections found by discovery. `retire` (a reload's old
        instances) start their grace period only once the containers are off them."""
        if self.repair is not None:
            self._cancel_repair("superseded by a newer repair")
        if self.engine is None:
            self._repair_finished(None, retire)
            return
        engine, kwargs = (
            self.engine,
            dict(fstype=self.o.fstype, stale_devs=stale, timeout=self.o.remount_timeout, jobs=self.o.jobs),
        )
        passes = [(repair.ALL, lambda: engine.remount(inst.mnt, self.o.state_dir, ids=None, **kwargs))]
        if ids:
            passes.insert(0, (repair.REGISTERED, lambda: engine.remount(inst.mnt, self.o.state_dir, ids=ids, **kwargs)))
        self.repair = repair.RepairJob(passes, timeout=self.o.remount_timeout * 4 + 10)
        self.repair_context = {
            "stale": stale,
            "dead": list(self.dead),
            "retire": retire,
            "inst": inst,
            "fault_at": self.fault_at,
            "ids": bool(ids),
            "fault_kind": self.fault_kind if self.fault_at is not None else None,
        }
        self.fault_at = None

    def _on_repair_output(self) -> None:
        job = self.repair
        if job is None:
            return
        for result in job.read():
            if result.get("pass") == repair.REGISTERED or not self.repair_context.get("ids"):
                self._registered_repaired(float(result.get("ms", 0.0)))
            if not result.get("ok"):
                log(f"remount left something broken: {result.get('broken')}")
        if job.finished:
            self.repair = None
            self._repair_finished(job, self.repair_context.get("retire", []))

    def _check_repair(self, now: float) -> None:
        if self.repair is not None and self.repair.expired(now):
            self._cancel_repair(f"timed out after {self.repair.timeout:.0f} s")

    def _cancel_repair(self, why: str) -> None:
        job, ctx = self.repair, self.repair_context
        if job is None:
            return
        self.repair = None
        job.cancel()
        log(
            f"repair {why}: its child pid {job.pid} was killed; containers it did not reach stay on their old "
            "connection until the next repair"
        )
        self.start_stale |= ctx.get("stale", set())  # not repaired: still to move off at the next repair
        self.last_repair = {
            "ok": False,
            "ms": round((time.monotonic() - job.started) * 1000, 1),
            "scope": "all",
            "broken": why,
        }
        for inst in ctx.get("retire", []):  # a reload's old instance does not serve on forever
            inst.retire_at = time.monotonic() + self.o.reload_grace
        self.repair_context = {}
        self._after_first_repair()  # READY=1 is not held back by a repair given up on
        self._write_status()

    def _registered_repaired(self, ms: float) -> None:
        """The registered containers are on the new instance: that ends a recovery (the figure we report)."""
        ctx = self.repair_context
        fault_at, inst = ctx.pop("fault_at", None), ctx.get("inst")
        if fault_at is None or inst is None:
            return
        now = time.monotonic()
        self.last_recovery_ms = (now - fault_at) * 1000
        ready = inst.ready_at or now
        log(
            f"recovered from {ctx.get('fault_kind')} in {self.last_recovery_ms:.1f} ms (serve pid {inst.pid}: "
            f"{'standby' if inst.launched < fault_at else f'started in {(ready - inst.launched) * 1000:.0f} ms'}"
            f", registered containers repaired in {ms:.1f} ms)"
        )

    def _repair_finished(self, job: repair.RepairJob | None, retire: list[Instance]) -> None:
        """Containers are off the dead instances: their private mounts may go now (not before: holding them
        keeps their device numbers from being handed to some other FUSE filesystem meanwhile)."""
        ctx = self.repair_context
        ms = 0.0
        if job is not None:
            ok = all(r.get("ok") for r in job.results.values()) and bool(job.results)
            ms = round((time.monotonic() - job.started) * 1000, 1)
            self.last_repair = {"ok": ok, "ms": ms, "scope": "all"}
            if ctx.get("fault_kind") is None and ctx.get("stale"):  # (a recovery logs its own line)
                log(f"moved containers off {', '.join(sorted(f'{os.major(d)}:{os.minor(d)}' for d in ctx['stale']))}")
        if ctx.get("fault_at") is not None:  # no pass reported (none needed, or none got through)
            self._registered_repaired(ms)
        done = ctx.get("dead", list(self.dead))
        for dead in done:
            dead.cleanup()
        self.dead = [d for d in self.dead if d not in done]
        for inst in retire:
            inst.retire_at = time.monotonic() + self.o.reload_grace
        self.repair_context = {}
        self._after_first_repair()
        self._count_containers()
        self._write_status()

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

            removed = Registry(self.o.state_dir, lock_timeout=0.5).remove_if(gone)  # retried next time
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
