"""Adoption: a previous supervisor died, its daemons may still serve. What answers is taken over
(containers never notice a supervisor restart); the rest is killed and its containers repaired."""

from __future__ import annotations

import contextlib
import os
import signal

from lxcfs_guard.kernel import procfs
from lxcfs_guard.watchdog import fusectl, instance, status
from lxcfs_guard.watchdog.instance import Instance, Role
from lxcfs_guard.watchdog.probe import ProbeResult, probe
from lxcfs_guard.watchdog.supervisor_state import SupervisorState, log


class Adoption(SupervisorState):
    def _adopt_or_start(self) -> None:
        """Take over what a previous supervisor left: daemons that still answer are adopted (containers never
        notice a supervisor restart), the rest is killed and its containers repaired onto the new primary."""
        rec = status.read_status(self.o.state_dir) or {}
        top = status.top_mount_dev(procfs.read_mountinfo("self"), self.mountpoint, self.o.fstype)
        known: set[str] = set()
        for record in rec.get("instances", []):
            if not isinstance(record, dict):
                continue
            role_name = record.get("role")
            try:
                role = Role(role_name) if isinstance(role_name, str) else Role.LEFT
            except ValueError:
                role = Role.LEFT  # a record this version does not know: never adopted, stopped like a left-over
            inst = instance.adopt(role, record, self.o.fstype)
            if inst is None:  # gone: its directory (and dead mount, if any) is collected below
                continue
            known.add(inst.dir)
            result = self._probe_now(inst) if role in (Role.PRIMARY, Role.STANDBY) and inst.dev is not None else None
            if result is not None and result.ok:
                inst.ready = True
                if role is Role.PRIMARY and self.primary is None:
                    self.primary = inst
                    log(f"adopted serving pid {inst.pid} from the previous supervisor")
                    continue
                if role is Role.STANDBY and self.standby is None:
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
            left = Instance(role=Role.LEFT, pid=0, start_time=-1, dir=path, fstype=self.o.fstype)
            for pid in instance.pids_serving(left.mnt):
                log(f"stopping unrecorded daemon pid {pid} on {left.mnt}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            left.dev = left.find_mount()
            log(f"left-over instance {name}: {f'dead mount {left.dev_str}' if left.dev is not None else 'no mount'}")
            self.dead.append(left)
