"""Container tracking: the registered containers (the registry, their exits from the proc connector,
their live/stale counts) and the repair pass that moves them onto the serving instance."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from typing import Any

from lxcfs_guard.remount.registry import FILENAME as REGISTRY_FILE
from lxcfs_guard.watchdog import status
from lxcfs_guard.watchdog.instance import Instance
from lxcfs_guard.watchdog.supervisor_state import SupervisorState, log


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



class Tracking(SupervisorState):
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
