"""Publishing: the host mountpoint holds a clone of the serving instance's mount, and the health and
status the supervisor reports (the status file, sd_notify's WATCHDOG=1 and STATUS=)."""

from __future__ import annotations

import contextlib
import os
import time

from lxcfs_guard.kernel import notify, procfs, syscalls
from lxcfs_guard.watchdog import policy, status
from lxcfs_guard.watchdog.instance import Instance
from lxcfs_guard.watchdog.supervisor_state import SupervisorState, log


class Publishing(SupervisorState):
    def _publish(self, inst: Instance) -> None:
        """Put `inst`'s mount on the host mountpoint: atomically beneath whatever is there (a dead mount, or
        the previous instance's), so the host path is never empty; attached plainly if nothing is."""
        top = status.top_mount_dev(procfs.read_mountinfo("self"), self.mountpoint, self.o.fstype)
        if top is not None and top == inst.dev:
            return
        try:
            # Only a mount of ours is ever replaced (swap_mount): anything else on the mountpoint (a
            # DaemonSet's hostPath bind with Bidirectional propagation) is what carries our mount to the node.
            if self.engine is not None:  # loaded up front with the engine: no import cost here
                from lxcfs_guard.remount.live import swap_mount

                swap_mount(inst.mnt, self.mountpoint)
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
        daemon_pid = p.pid if p is not None else None
        data = {
            "mode": "supervise",
            "supervisor_pid": os.getpid(),
            "supervisor_start_time": procfs.pid_start_time(os.getpid()),
            "daemon_pid": daemon_pid,
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
            "instances": [dict(i.to_json(), role=i.role.value) for i in self._instances()],
            "started": self.started,
            "updated": time.time(),
        }
        with contextlib.suppress(OSError):
            status.write_status(self.o.state_dir, data)
        notify.notify(
            "STATUS="
            + policy.status_line(
                daemon_pid, self.containers_live, self.containers_total, self.restarts, self.last_recovery_ms
            )
        )
