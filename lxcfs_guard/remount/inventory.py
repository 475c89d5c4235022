"""`list`: every registered and discovered container with the state of its binds, read from mountinfo
(no FUSE request, except the deadline-bounded statfs probe of connections other than the live one).

States: live (every bind on the live connection), dead (some on a dead connection: `remount` repairs it),
stale (some on another connection, not probed), other (bound to another daemon that answers), hung (a
daemon holds our probe: busy or hung), unbound (registered, no bind of ours), gone (registered, the container
is gone).
"""

from __future__ import annotations

import os

from lxcfs_guard.kernel.syscalls import statx_cached
from lxcfs_guard.remount import discovery
from lxcfs_guard.remount.plan import identity_problem, ns_id, top_mounts
from lxcfs_guard.remount.registry import Registry
from lxcfs_guard.remount.report import fmt_dev


def _live(mountpoint: str, timeout: float) -> tuple[int | None, str, str]:
    """(device, state, message) of the mount at `mountpoint`, never waiting more than `timeout` s
    for it: the device from cached attributes, the answer from a statfs in a child (discovery.answers)."""
    try:
        fd = discovery.open_mount_root(mountpoint)
    except OSError as e:
        return None, "error", str(e.strerror)
    try:
        dev = statx_cached(fd)[1]
        state = discovery.answers(fd, timeout)
    except OSError as e:
        return None, "error", str(e.strerror)
    finally:
        os.close(fd)
    if state == discovery.HUNG:
        return dev, state, f"device {fmt_dev(dev)} does not answer within {timeout:g} s (its daemon is hung or stopped)"
    if state == discovery.DEAD:
        return dev, state, f"device {fmt_dev(dev)} is dead (its daemon is gone)"
    return dev, state, state


def inventory(
    mountpoint: str,
    state_dir: str,
    fstype: str,
    probe: bool = True,
    probe_timeout: float = 1.0,
    answer_timeout: float = 2.0,
) -> tuple[list[dict[str, object]], list[str]]:
    """(rows, warnings): one row per container, registered ones first. No step waits for a FUSE daemon
    longer than `answer_timeout` (the live mount) or `probe_timeout` (the others)."""
    warnings: list[str] = []
    registry = Registry(state_dir)
    entries = registry.load()
    if registry.problem:
        warnings.append(registry.problem)
    proc_fd = discovery.open_proc()
    try:
        live_dev, live_state, message = _live(mountpoint, answer_timeout)
        if live_state != discovery.LIVE:
            warnings.append(f"live mount {mountpoint}: {message}")
        host_ns = os.stat("self/ns/mnt", dir_fd=proc_fd).st_ino
        idents = {cid: discovery.identity(e.pid, proc_fd) for cid, e in entries.items()}
        prober = (
            discovery.Prober(proc_fd, skip=() if live_dev is None else (live_dev,), timeout=probe_timeout)
            if probe
            else None
        )
        try:
            first = [(e.pid, e.mntns) for cid, e in entries.items() if idents[cid][1] == e.mntns]
            views = discovery.discover(fstype, proc_fd, first, host_ns, on_found=prober.watch if prober else None)
        finally:
            states = prober.results() if prober else {}
    finally:
        os.close(proc_fd)

    def label(dev: int) -> str:
        if dev == live_dev:
            return "live" if live_state == discovery.LIVE else live_state
        state = states.get(dev, "stale")
        return "other" if state == discovery.LIVE else state

    def state_of(mounts: list) -> tuple[str, list[str]]:
        devs = sorted({m.dev for m in top_mounts(mounts).values()})
        labels = {label(d) for d in devs}
        worst = next((s for s in ("dead", "hung", "stale", "other", "live") if s in labels), None)
        return worst or (sorted(labels)[0] if labels else "unbound"), [fmt_dev(d) for d in devs]

    rows: list[dict[str, object]] = []
    claimed: set[int] = set()
    for cid, e in sorted(entries.items()):
        start, mntns = idents[cid]
        row = {"id": cid, "pid": e.pid, "mntns": e.mntns, "registered": True, "binds": len(e.binds)}
        problem = identity_problem(e, start, mntns)
        if problem:
            row.update(state="gone", devices=[], reason=problem)
        else:
            claimed.add(e.mntns)
            view = views.get(e.mntns)
            row["state"], row["devices"] = state_of(view.mounts if view else [])
        rows.append(row)
    for mntns, view in sorted(views.items()):
        if mntns not in claimed:
            state, devs = state_of(view.mounts)
            rows.append(
                {
                    "id": ns_id(mntns),
                    "pid": view.pid,
                    "mntns": mntns,
                    "registered": False,
                    "binds": len(top_mounts(view.mounts)),
                    "state": state,
                    "devices": devs,
                }
            )
    return rows, warnings
