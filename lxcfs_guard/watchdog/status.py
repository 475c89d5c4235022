"""`lxcfs-guard status [--json]`, and the status file `supervise` keeps for it.

Works in every mode from the state directory alone:
- under `supervise` (by hand or under systemd): `{state_dir}/status.json`, rewritten atomically by the
  supervisor on every change, names the daemon serving now, health, restarts and the last recovery time;
- plain `serve`: no status file (or one whose supervisor is gone), so the daemon is found from
  `{state_dir}/serve/<pid>.json` and its health is measured here with one probe.
Containers come from the registry; their state is read from their mountinfo (never by touching a FUSE
path, which would hang on a hung daemon): `live` (every bind on the live connection), `stale` (some bind on
another, dead or old, connection), `unbound` (none of our binds), `gone` (the registered process is not
running any more).

Kept light: no trio, pyfuse3 or pyroute2 here, `status` must answer fast even when everything else is slow.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from lxcfs_guard import config
from lxcfs_guard.kernel import procfs
from lxcfs_guard.kernel.files import write_atomic
from lxcfs_guard.text import printable

STATUS_FILE = "status.json"


# --- the file -------------------------------------------------------------------------------------


def write_status(state_dir: str, data: dict[str, Any]) -> None:
    """Atomic replace (temp + rename): a reader sees the old or the new file, never half of one.
    No fsync: the state directory is on /run (tmpfs) and the content is rebuilt on every start."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    write_atomic(os.path.join(state_dir, STATUS_FILE), text.encode())


def read_status(state_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(state_dir, STATUS_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- pure pieces ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    pid: int
    state: str  # live | stale | unbound | gone

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid, "state": self.state}


def bind_state(mounts: list[procfs.MountInfo], fstype: str, live_dev: int | None) -> str:
    """State of one container from its own mount table."""
    ours = [m for m in mounts if m.fstype == fstype]
    if not ours:
        return "unbound"
    if live_dev is not None and all(m.dev == live_dev for m in ours):
        return "live"
    return "stale"


def top_mount_dev(mounts: list[procfs.MountInfo], mountpoint: str, fstype: str) -> int | None:
    """Dev of the mount a path lookup of `mountpoint` reaches, if it is of `fstype`. Stacked mounts at one
    path are parents of each other, so the top is the one no other mount there names as its parent (list
    order is not enough: MOVE_MOUNT_BENEATH inserts a mount *under* the top)."""
    here = [m for m in mounts if m.mount_point == mountpoint]
    if not here:
        return None
    parents = {m.parent_id for m in here}
    tops = [m for m in here if m.mount_id not in parents]
    top = tops[-1] if tops else here[-1]
    return top.dev if top.fstype == fstype else None


def mountpoint_path(path: str) -> str:
    """The canonical path of a mountpoint as mountinfo shows it, without touching the mountpoint itself:
    realpath() would lstat it, and an lstat of a hung FUSE mount's root blocks forever."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def format_text(report: dict[str, Any]) -> str:
    """The report for a person: every id and path escaped (`text.printable`)."""
    rec = report.get("last_recovery_ms")
    lines = [
        f"mode:             {printable(report.get('mode'))}",
        f"daemon_pid:       {report.get('daemon_pid') or '-'}",
        f"mountpoint:       {printable(report.get('mountpoint'))}",
        f"healthy:          {'yes' if report.get('healthy') else 'no'}",
        f"restarts:         {report.get('restarts', 0)}",
        f"last_recovery_ms: {'-' if rec is None else f'{rec:.1f}'}",
    ]
    if report.get("supervisor_pid"):
        lines.insert(1, f"supervisor_pid:   {report['supervisor_pid']}")
    if report.get("standby_pid"):
        lines.append(f"standby_pid:      {report['standby_pid']}")
    workers = report.get("workers")
    if workers:
        pids = " ".join(str(w.get("pid")) for w in workers)
        lines.append(
            f"workers:          {len(workers)} worker{'s' if len(workers) != 1 else ''} (pids {pids}), "
            f"{report.get('worker_restarts', 0)} restarted"
        )
    containers = report.get("containers", [])
    lines.append(f"containers:       {len(containers)}")
    if containers:
        ids = [printable(c["id"]) for c in containers]
        width = max(len(i) for i in ids)
        lines.append(f"  {'ID':<{width}}  {'PID':>7}  STATE")
        lines += [f"  {i:<{width}}  {c['pid']:>7}  {c['state']}" for i, c in zip(ids, containers, strict=True)]
    return "\n".join(lines)


# --- gathering ------------------------------------------------------------------------------------


def alive(pid: Any, start_time: Any = None) -> bool:
    """Is `pid` running (and, given `start_time`, still the very process recorded)?"""
    try:
        pid = int(pid)
        if pid <= 0:
            return False
        if start_time is None:
            return os.path.exists(f"/proc/{pid}")
        return procfs.pid_start_time(pid) == int(start_time)
    except (procfs.ProcessGone, TypeError, ValueError):
        return False


def registered_containers(state_dir: str) -> list[tuple[str, int, int | None]]:
    """(id, pid, start_time) of every registered container; empty if the registry is absent or unreadable."""
    from lxcfs_guard.remount.registry import Registry

    try:
        entries = Registry(state_dir, lock_timeout=0.5).load()  # it only locks to set a bad entry aside
    except Exception:  # noqa: BLE001 - a broken registry must not break `status`
        return []
    return [(e.id, e.pid, e.start_time) for e in entries.values()]


def container_states(
    entries: list[tuple[str, int, int | None]], fstype: str, live_dev: int | None
) -> list[ContainerState]:
    out = []
    for cid, pid, start_time in entries:
        if not alive(pid, start_time):
            out.append(ContainerState(cid, pid, "gone"))
            continue
        try:
            out.append(ContainerState(cid, pid, bind_state(procfs.read_mountinfo(pid), fstype, live_dev)))
        except procfs.ProcessGone:
            out.append(ContainerState(cid, pid, "gone"))
    return out


def _serve_records(state_dir: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(glob.glob(os.path.join(state_dir, "serve", "*.json"))):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                rec = json.load(f)
            if isinstance(rec, dict) and alive(rec.get("pid")):
                out.append(rec)
    return out


def serve_workers(state_dir: str, daemon_pid: Any) -> dict[str, Any]:
    """The serving daemon's workers from its own state file ({state_dir}/serve/<pid>.json): pids, start
    times and restarts of each, and how many were replaced in all. Empty for a daemon without workers."""
    if not daemon_pid:
        return {}
    try:
        with open(os.path.join(state_dir, "serve", f"{int(daemon_pid)}.json")) as f:
            rec = json.load(f)
    except (OSError, ValueError, TypeError):
        return {}
    if not isinstance(rec, dict) or not isinstance(rec.get("workers"), list):
        return {}
    workers = [w for w in rec["workers"] if isinstance(w, dict) and alive(w.get("pid"))]
    return {"workers": workers, "worker_restarts": int(rec.get("worker_restarts", 0))}


def gather(state_dir: str, mountpoint: str, fstype: str, probe_timeout: float = 1.0) -> dict[str, Any]:
    """The status report (see module doc); `healthy` is measured here unless a live supervisor's fresh
    record says it."""
    mountpoint = mountpoint_path(mountpoint)
    rec = read_status(state_dir)
    supervised = rec is not None and alive(rec.get("supervisor_pid"), rec.get("supervisor_start_time"))
    report: dict[str, Any]
    if rec is not None and supervised:
        mountpoint = rec.get("mountpoint", mountpoint)
        fstype = rec.get("fstype", fstype)
        report = {
            "mode": rec.get("mode", "supervise"),
            "supervisor_pid": rec.get("supervisor_pid"),
            "daemon_pid": rec.get("daemon_pid"),
            "standby_pid": rec.get("standby_pid"),
            "mountpoint": mountpoint,
            "healthy": bool(rec.get("healthy")) and alive(rec.get("daemon_pid")),
            "restarts": int(rec.get("restarts", 0)),
            "last_recovery_ms": rec.get("last_recovery_ms"),
            "updated": rec.get("updated"),
        }
    else:
        records = _serve_records(state_dir)
        serving = [r for r in records if mountpoint_path(str(r.get("mountpoint"))) == mountpoint] or records
        daemon = serving[0] if serving else None
        report = {
            "mode": "serve" if daemon else "stopped",
            "daemon_pid": daemon.get("pid") if daemon else None,
            "mountpoint": mountpoint,
            "healthy": False,
            "restarts": int(rec.get("restarts", 0)) if rec else 0,
            "last_recovery_ms": rec.get("last_recovery_ms") if rec else None,
        }
    report.update(serve_workers(state_dir, report.get("daemon_pid")))
    mounts = procfs.read_mountinfo("self")
    live_dev = top_mount_dev(mounts, mountpoint, fstype)
    if report["mode"] == "serve":
        from lxcfs_guard.watchdog.probe import probe

        report["healthy"] = live_dev is not None and probe(os.path.join(mountpoint, "proc/uptime"), probe_timeout).ok
    report["mount_dev"] = f"{os.major(live_dev)}:{os.minor(live_dev)}" if live_dev is not None else None
    report["containers"] = [c.to_json() for c in container_states(registered_containers(state_dir), fstype, live_dev)]
    report["checked"] = time.time()
    return report


# --- the command ----------------------------------------------------------------------------------


def configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", default=config.default_state_dir(), help="state directory (default: %(default)s)"
    )
    parser.add_argument(
        "--mountpoint", default=config.default_mountpoint(), help="host mountpoint (default: %(default)s)"
    )
    parser.add_argument("--fstype", default=config.FSTYPE, help="FUSE type of the guarded mount (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=1.0, help="probe timeout in plain-serve mode (seconds)")


def run_status(args: argparse.Namespace) -> int:
    """Exit 0 when the daemon is healthy, 1 otherwise (so scripts and health checks can use it)."""
    report = gather(args.state_dir, args.mountpoint, args.fstype, args.timeout)
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        print(format_text(report))
    return 0 if report["healthy"] else 1
