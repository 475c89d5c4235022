"""Decide, without touching the kernel, what to do in each mount namespace (pure functions, unit-tested
with fixture data).

Inputs are what discovery saw (per namespace: one live pid and the mountinfo lines of our fstype), what the
registry intends (per container: identity and binds), the live connection's device and the set of devices
judged stale. The output is a list of jobs for the engine (one per namespace: the targets to fix and how)
plus the outcomes already known without entering anything (already live, gone, refused).

Scoping rule (the caller's contract): a mount is repaired only if its device is in `stale_devs` — devices
of dead connections, or of a daemon being replaced. A mount on any other device is another daemon's (a
standby, another test run) and is never touched; a namespace that has only such mounts is not reported.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping

from lxcfs_guard.kernel.syscalls import attrs_from_options
from lxcfs_guard.remount.registry import Entry
from lxcfs_guard.remount.report import ALREADY_LIVE, GONE, REFUSED, NamespaceReport, TargetError, fmt_dev

BENEATH = "beneath"  # a stale mount is at the target: put the live one under it, then detach it
ATTACH = "attach"  # a registered target has no mount of ours: bind the live file on top of it
UNCOVER = "uncover"  # a stale mount sits right on a live one (an interrupted run, an old stacking script): detach it
DETACH = "detach"  # a stale copy of a supervisor's private instance mount: nothing belongs there, detach it

INSTANCES = "instances"  # {state_dir}/instances/<token>/mnt: where supervise mounts its daemons (watchdog.instance)


class Mount:
    """One mountinfo line of our fstype in a namespace, reduced to what the plan needs."""

    __slots__ = ("mount_id", "parent_id", "dev", "root", "target", "options", "submounts")

    def __init__(
        self, mount_id: int, parent_id: int, dev: int, root: str, target: str, options: str, submounts: bool = False
    ) -> None:
        self.mount_id = mount_id
        self.parent_id = parent_id
        self.dev = dev
        self.root = root
        self.target = target
        self.options = options
        self.submounts = submounts  # some mount (of any type) has this one as its parent

    def __repr__(self) -> str:
        return f"Mount({self.mount_id}, {self.parent_id}, {fmt_dev(self.dev)}, {self.root!r}, {self.target!r})"


class NsView:
    """A mount namespace as discovery saw it: its inode, the pid whose mountinfo (and root) was read, and
    the mounts of our fstype (paths relative to that pid's root)."""

    __slots__ = ("mntns", "pid", "mounts")

    def __init__(self, mntns: int, pid: int, mounts: list[Mount]) -> None:
        self.mntns = mntns
        self.pid = pid
        self.mounts = mounts


class Fix:
    """One target to make serve the live connection. `how` is BENEATH (replace the stale mount whose
    device is `expect_dev`), UNCOVER (detach that stale mount: a live one is right under it) or ATTACH
    (bind on top of the plain file there). `attrs` are the MOUNT_ATTR_*
    bits the new mount must carry (None: keep the live mount's). An `optional` target that does not exist
    is skipped silently (cpu/online in a container without /sys)."""

    __slots__ = ("source", "target", "how", "expect_dev", "attrs", "optional")

    def __init__(
        self,
        source: str,
        target: str,
        how: str,
        expect_dev: int | None = None,
        attrs: int | None = None,
        optional: bool = False,
    ) -> None:
        self.source = source.lstrip("/")
        self.target = target
        self.how = how
        self.expect_dev = expect_dev
        self.attrs = attrs
        self.optional = optional

    def __repr__(self) -> str:
        return f"Fix({self.source!r}, {self.target!r}, {self.how})"


class Job:
    """The work for one namespace. `start_time` (registered containers) must still match when the engine
    opens the pid. `refusals` are targets of this namespace already refused by the plan; the engine's
    report for the namespace carries them. `root` is the container's root as a path inside its namespace,
    for when /proc/PID/root is not it yet (an OCI hook before pivot_root); None: /proc/PID/root."""

    __slots__ = ("id", "pid", "start_time", "mntns", "fixes", "refusals", "root")

    def __init__(
        self,
        id: str,
        pid: int,
        mntns: int,
        fixes: list[Fix],
        start_time: int | None = None,
        refusals: list[TargetError] | None = None,
        root: str | None = None,
    ) -> None:
        self.id = id
        self.pid = pid
        self.mntns = mntns
        self.fixes = fixes
        self.start_time = start_time
        self.refusals = refusals or []
        self.root = root

    def __repr__(self) -> str:
        return f"Job({self.id!r}, pid={self.pid}, fixes={self.fixes!r})"


def ns_id(mntns: int) -> str:
    return f"mntns:{mntns}"


def top_mounts(mounts: Iterable[Mount]) -> dict[str, Mount]:
    """Per target, the mount a path lookup lands on: where mounts are stacked on one target, the one no
    other mount at that target sits on."""
    by_target: dict[str, list[Mount]] = {}
    for m in mounts:
        by_target.setdefault(m.target, []).append(m)
    tops: dict[str, Mount] = {}
    for target, group in by_target.items():
        if len(group) == 1:
            tops[target] = group[0]
            continue
        covered = {m.parent_id for m in group}
        uncovered = [m for m in group if m.mount_id not in covered]
        tops[target] = (uncovered or group)[-1]
    return tops


def stale_fix(m: Mount, mounts_by_id: Mapping[int, Mount], live_dev: int, detach_under: str | None = None) -> Fix:
    """The fix for stale top mount `m`: detach it if the mount right under it is already live, or if it
    is a copy of a supervisor's private instance mount (its target is under `detach_under`); else put a
    live one beneath it. The same for a file bind and a directory bind (the whole filesystem, `proc`,
    `sys/devices/system/cpu`): the clone is of the same path of the live filesystem."""
    under = mounts_by_id.get(m.parent_id)
    if under is not None and under.target == m.target and under.dev == live_dev:
        how = UNCOVER
    elif detach_under and m.target.startswith(detach_under):
        how = DETACH
    else:
        how = BENEATH
    return Fix(m.root, m.target, how, m.dev, attrs_from_options(m.options))


def instance_prefix(state_dir: str) -> str:
    """Targets under this prefix are copies of a supervisor's private instance mounts (see DETACH).

    Why detach rather than repair: `supervise` mounts each daemon on `{state_dir}/instances/<token>/mnt`
    inside a private mount of its own, so those mounts never propagate; a namespace holds a copy only
    because it was copied from the host's while that daemon ran (`unshare -m`, a sandbox, a systemd
    service with PrivateMounts). Nothing in it reads them (the host mountpoint is what is published), the
    directory is removed on the host when that instance is cleaned up, and a live clone put there would
    pin a daemon the supervisor knows nothing of. So the dead copy is detached and nothing takes its
    place. The copy of the host mountpoint in such a namespace is repaired like any directory bind."""
    return os.path.join(os.path.realpath(state_dir), INSTANCES) + "/"


def _stale_fixes(
    tops: Iterable[Mount], by_id: Mapping[int, Mount], live_dev: int, stale_devs: set[int], detach_under: str | None
) -> tuple[list[Fix], list[TargetError]]:
    """Fixes for the stale top mounts among `tops`; a stale directory bind with mounts inside it is
    refused (detaching it would take those mounts with it; its clone would not have them). A live top
    mount right on another live one at the same target (a worker left stuck by an earlier run finished
    its move after all) is detached: UNCOVER with the live device expected."""
    fixes: list[Fix] = []
    refusals: list[TargetError] = []
    for m in tops:
        if m.dev == live_dev:
            under = by_id.get(m.parent_id)
            if under is not None and under.target == m.target and under.dev == live_dev:
                fixes.append(Fix(m.root, m.target, UNCOVER, live_dev, attrs_from_options(m.options)))
            continue
        if m.dev not in stale_devs:
            continue
        if m.submounts:
            refusals.append(
                TargetError(
                    m.target,
                    errno.EBUSY,
                    "other mounts sit inside this stale directory bind; detaching it would take them: left alone",
                )
            )
        else:
            fixes.append(stale_fix(m, by_id, live_dev, detach_under))
    return fixes, refusals


def identity_problem(entry: Entry, start_time: int | None, mntns: int | None) -> str | None:
    """Why the process now at `entry.pid` is not the registered container (None: it is)."""
    if start_time is None:
        return f"pid {entry.pid} has exited"
    if start_time != entry.start_time:
        return f"pid {entry.pid} was reused (start time {start_time}, registered {entry.start_time})"
    if mntns != entry.mntns:
        return f"pid {entry.pid} is in mount namespace {mntns}, registered {entry.mntns}"
    return None


def plan(
    namespaces: Mapping[int, NsView],
    entries: Iterable[Entry],
    identities: Mapping[str, tuple[int | None, int | None]],
    live_dev: int,
    stale_devs: set[int],
    host_ns: int,
    detach_under: str | None = None,
) -> tuple[list[Job], list[NamespaceReport]]:
    """Jobs for the engine and the outcomes known already.

    `identities[id]` is (start time, mount-namespace inode) read now for the entry's pid (None, None if it
    is gone). `namespaces` must include the namespace of every registered container that is still itself
    (with its pid); the namespace of the caller (`host_ns`) is never planned for. Stale mounts whose
    target is under `detach_under` (see instance_prefix) are detached, not repaired.
    """
    jobs: list[Job] = []
    done: list[NamespaceReport] = []
    claimed: set[int] = set()

    for entry in entries:
        start_time, mntns = identities.get(entry.id, (None, None))
        problem = identity_problem(entry, start_time, mntns)
        if problem:
            done.append(
                NamespaceReport(entry.id, entry.pid, entry.mntns, GONE, errors=[TargetError("-", errno.ESRCH, problem)])
            )
            continue
        if entry.mntns == host_ns:
            done.append(
                NamespaceReport(
                    entry.id,
                    entry.pid,
                    entry.mntns,
                    REFUSED,
                    errors=[TargetError("-", errno.EPERM, "registered pid is in the host's own mount namespace")],
                )
            )
            continue
        claimed.add(entry.mntns)
        view = namespaces.get(entry.mntns)
        tops = top_mounts(view.mounts if view else ())
        by_id = {m.mount_id: m for m in view.mounts} if view else {}
        fixes: list[Fix] = []
        refusals: list[TargetError] = []
        stale: list[Mount] = []
        wanted = set()
        for bind in entry.binds:
            wanted.add(bind.target)
            m = tops.get(bind.target)
            if m is None:
                attrs = attrs_from_options(bind.flags) if bind.flags else None
                fixes.append(Fix(bind.source, bind.target, ATTACH, None, attrs))
            elif m.dev in stale_devs:
                stale.append(m)
            elif m.dev != live_dev:
                refusals.append(
                    TargetError(
                        bind.target,
                        errno.EBUSY,
                        f"bound to another live connection ({fmt_dev(m.dev)}), not ours to replace",
                    )
                )
        stale += [m for m in tops.values() if m.target not in wanted or m.dev == live_dev]
        more, refused = _stale_fixes(stale, by_id, live_dev, stale_devs, detach_under)
        fixes += more
        refusals += refused
        if fixes:
            jobs.append(Job(entry.id, entry.pid, entry.mntns, fixes, entry.start_time, refusals))
        elif refusals:
            done.append(NamespaceReport(entry.id, entry.pid, entry.mntns, REFUSED, errors=refusals))
        else:
            done.append(NamespaceReport(entry.id, entry.pid, entry.mntns, ALREADY_LIVE))

    for mntns, view in namespaces.items():
        if mntns == host_ns or mntns in claimed:
            continue
        tops = top_mounts(view.mounts)
        by_id = {m.mount_id: m for m in view.mounts}
        fixes, refusals = _stale_fixes(tops.values(), by_id, live_dev, stale_devs, detach_under)
        if fixes:
            jobs.append(Job(ns_id(mntns), view.pid, mntns, fixes, refusals=refusals))
        elif refusals:
            done.append(NamespaceReport(ns_id(mntns), view.pid, mntns, REFUSED, errors=refusals))
        elif any(m.dev == live_dev for m in tops.values()):
            done.append(NamespaceReport(ns_id(mntns), view.pid, mntns, ALREADY_LIVE))
    return jobs, done
