"""The remount engine: make every container's binds of a dead FUSE connection serve the live one again,
in place, with no restart and no preparation inside the container.

Per mount namespace, in a forked worker (setns(CLONE_NEWNS) refuses a process whose fs_struct is shared, so
each worker thread unshares its own first):

1. in the host namespace: `open_tree(live file, OPEN_TREE_CLONE)` once per target (a clone is used up by
   the move that attaches it), made private and given the flags the old bind had (`mount_setattr`: ro,
   nosuid, nodev, noexec) while still detached, so the new mount is never briefly writable;
2. `setns` into the container's mount namespace (fds to it and to /proc/PID/root were opened first, and
   the pid's start time checked around that, so a reused pid is never entered);
3. resolve the target inside the container's root with `openat2(RESOLVE_IN_ROOT|RESOLVE_NO_SYMLINKS, O_PATH)`:
   a symlink anywhere on the path, or a target that is not a regular file, is refused and reported;
4. `move_mount(clone, target, MOVE_MOUNT_BENEATH)` slides the live mount *under* the stale one, then the
   stale one is detached **through the fd we resolved** (`umount2("<fd>")` with our cwd on our own
   /proc/self/fd: the magic link names that mount, and umount's lookup only climbs to mounts stacked *on*
   it, so it can never reach the new one under it); a reader sees ENOTCONN and then the live file, never
   the file underneath and never ENOENT. On kernels without BENEATH (< 6.5) the stale mount is detached
   first and the clone moved onto the file it uncovered (a window of microseconds shows that file). A
   stale mount already sitting on a live one (an interrupted run, a stacking script) is simply detached;
5. back in the host namespace, verify: the target, resolved again from the container's root, is now on the
   live connection's device (statx with AT_STATX_DONT_SYNC: no FUSE round trip).

Every step is an fd-based syscall that never waits for a FUSE daemon; the cost is the detach, which waits
for an RCU grace period (stale mounts cannot be batched into one umount: it only detaches the topmost mount
at a place, and attached mounts cannot be moved into a detached tree). So each worker runs a few threads
whose waits overlap, and the parent runs 1-4 workers (fork once, then setns-hop from one container to the
next). The parent holds a deadline per namespace: a worker holding one past it is killed and replaced for
the namespaces it had not started, so one wedged namespace never stalls the others. One flock serialises
runs; a second run finds everything live and changes nothing.

Modules: steps.py holds the in-namespace steps, pool.py the forked workers and their deadlines, this one
the run (lock, discovery, plan, execution) and attach; live.py the live mount and swap_mount.

Scoping: only mounts on a *stale* device are touched: a device in `stale_devs` if the caller names them
(zero-downtime reload: the old daemon still answers), else a device whose connection is dead (statfs gives
ENOTCONN; see discovery.Prober). Mounts of any other live daemon are never touched, and the caller's own
mount namespace is never entered.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable, Sequence

from lxcfs_guard import config, devices
from lxcfs_guard.kernel import procfs
from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.kernel.files import LockTimeout, lock, open_lock, private_dir
from lxcfs_guard.remount import children, discovery, stuck
from lxcfs_guard.remount.live import live_mount, open_sources, use_beneath
from lxcfs_guard.remount.plan import ATTACH, Fix, Job, NsView, instance_prefix, plan, top_mounts
from lxcfs_guard.remount.pool import THREADS, run_jobs
from lxcfs_guard.remount.registry import Entry, Registry
from lxcfs_guard.remount.report import (
    ALREADY_LIVE,
    FAILED,
    GONE,
    REFUSED,
    REPAIRED,
    NamespaceReport,
    RemountReport,
    TargetError,
    fmt_dev,
)
from lxcfs_guard.remount.steps import Context

FSTYPE = config.FSTYPE
LOCKNAME = "remount.lock"
MODE_BENEATH = "beneath"
MODE_DETACH_MOVE = "detach-move"


class AttachError(OSError):
    """attach() left something unbound; `report` says what and why (errno of the first error)."""

    def __init__(self, report: NamespaceReport) -> None:
        first = report.errors[0] if report.errors else TargetError("-", errno.EIO, report.action)
        super().__init__(first.errno, "; ".join(map(str, report.errors)) or report.action)
        self.report = report


# --- the run ----------------------------------------------------------------------------------------------


def _lock(state_dir: str, timeout: float) -> int:
    """flock on <state-dir>/remount.lock (a private file, kernel/files.open_lock): runs (and attaches) take
    turns. The fd is closed in every child we fork (children.parent_only): a child stuck in the kernel must
    not keep the lock."""
    private_dir(state_dir)
    fd = open_lock(os.path.join(state_dir, LOCKNAME))
    try:
        lock(fd, time.monotonic() + timeout)
    except LockTimeout:
        os.close(fd)
        raise LockTimeout(
            errno.ETIMEDOUT, f"another remount holds {state_dir}/{LOCKNAME} for more than {timeout:g} s"
        ) from None
    return children.parent_only(fd)


def _unlock(fd: int) -> None:
    if fd >= 0:
        children.release(fd)
        os.close(fd)


def _default_workers(n_jobs: int) -> int:
    return max(1, min(os.cpu_count() or 1, 4, (n_jobs + 7) // 8))


def remount(
    live_root: str,
    state_dir: str,
    *,
    fstype: str = FSTYPE,
    ids: list[str] | None = None,
    stale_devs: set[int] | None = None,
    dry_run: bool = False,
    timeout: float = 5.0,
    jobs: int | None = None,
    threads: int = THREADS,
    beneath: bool | None = None,
    probe_timeout: float = 1.0,
    lock_timeout: float = 30.0,
    any_device: bool = False,
) -> RemountReport:
    """Repair every container whose binds of `fstype` point at a stale connection, cloning from the live
    mount at `live_root` (the host mountpoint, or a standby's private mountpoint).

    A mount is repaired if its device differs from `live_root`'s and is in `stale_devs` when given (a
    reload: the old daemon still answers), else if it is a device recorded as ours (lxcfs_guard.devices;
    any device with `any_device`) and its connection is dead (statfs gives ENOTCONN). Mounts of any other
    connection are never touched (nor probed), nor is the caller's own mount namespace. A file bind and a
    directory bind are repaired alike; stale copies of a supervisor's instance mounts are detached (see
    plan.instance_prefix). The live mount is asked one statfs, from a child, first: a hung one is refused
    within `min(timeout, 2)` s.
    `ids` limits the run to those registered containers (None: every registered and discovered one).
    `timeout` is per namespace; `jobs` the number of forked workers (default: by CPU count and work), each
    with `threads` threads;
    `beneath` forces (True) or forbids (False) MOVE_MOUNT_BENEATH (default: use it where the kernel has it,
    unless LXCFS_GUARD_NO_BENEATH=1). Registered containers found gone are removed from the registry
    (not in a dry run). Never raises for a container's failure: see the report's `ok` and per-namespace
    `action` and `errors`.
    """
    t0 = time.perf_counter()
    report = RemountReport(live_root, fstype, dry_run)
    lock_fd = -1
    children.reap_left_behind()
    proc_fd = discovery.open_proc()
    try:
        lock_fd = _lock(state_dir, lock_timeout)
        try:
            live_dev, live_attrs, live_shared = live_mount(live_root, fstype, proc_fd, min(timeout, 2.0))
        except OSError as e:
            report.error = f"live mount {live_root}: {e.strerror or e}"
            return report
        report.live_dev = live_dev
        ours = None if any_device or stale_devs is not None else devices.recorded(state_dir)
        held = stuck.active(state_dir)
        if not dry_run:
            devices.record(state_dir, live_dev, live_root)
        registry = Registry(state_dir)
        entries = registry.load()
        if registry.problem:
            report.warnings.append(registry.problem)
        host_ns = os.stat("self/ns/mnt", dir_fd=proc_fd).st_ino
        wanted = ids if ids is not None else sorted(entries)
        selected: list[Entry] = [entries[cid] for cid in wanted if cid in entries]
        report.namespaces += [
            NamespaceReport(cid, 0, 0, FAILED, errors=[TargetError("-", errno.ENOENT, "no such registered container")])
            for cid in wanted
            if cid not in entries
        ]
        identities = {e.id: discovery.identity(e.pid, proc_fd) for e in selected}
        itself = [(e.pid, e.mntns) for e in selected if identities[e.id][1] == e.mntns]
        namespaces, stale = _find_stale(
            fstype,
            proc_fd,
            itself,
            host_ns,
            ids is None,
            live_dev,
            stale_devs,
            probe_timeout,
            report,
            ours,
            state_dir,
            held,
        )
        t3 = time.perf_counter()
        todo, known = plan(namespaces, selected, identities, live_dev, stale, host_ns, instance_prefix(state_dir))
        known += [
            NamespaceReport(
                j.id,
                j.pid,
                j.mntns,
                FAILED,
                errors=[
                    TargetError(
                        "-",
                        errno.EBUSY,
                        f"a repair of this namespace by an earlier run (pid {held[stuck.ns_key(j.mntns)]}) is "
                        "still stuck in the kernel; not tried again until it ends",
                    )
                ],
            )
            for j in todo
            if stuck.ns_key(j.mntns) in held
        ]
        todo = [j for j in todo if stuck.ns_key(j.mntns) not in held]
        report.mode = MODE_BENEATH if use_beneath(beneath) else MODE_DETACH_MOVE
        if dry_run:
            report.namespaces += known
            report.namespaces += [
                NamespaceReport(
                    j.id,
                    j.pid,
                    j.mntns,
                    REFUSED if j.refusals else REPAIRED,
                    [f.target for f in j.fixes],
                    list(j.refusals),
                )
                for j in todo
            ]
            return report
        t4 = time.perf_counter()
        report.phases_ms["plan"] = (t4 - t3) * 1000
        results = _execute(
            todo,
            live_root,
            live_dev,
            live_attrs,
            live_shared,
            report.mode == MODE_BENEATH,
            proc_fd,
            jobs,
            timeout,
            threads,
            state_dir,
        )
        report.phases_ms["repair"] = (time.perf_counter() - t4) * 1000
        report.namespaces += known + results
        gone_ids = {ns.id for ns in report.namespaces if ns.action == GONE}
        gone = {e.id: (e.pid, e.start_time) for e in selected if e.id in gone_ids}
        if gone:
            registry.remove_if(gone)
        if ours is not None and ids is None:
            _forget_unused(state_dir, ours, namespaces, live_dev, fstype, proc_fd)
        return report
    except TimeoutError as e:
        report.error = str(e)
        return report
    finally:
        _unlock(lock_fd)
        os.close(proc_fd)
        report.left_behind = sorted(children.LEFT_BEHIND)
        if report.left_behind:
            report.warnings.append(
                f"{len(report.left_behind)} child process(es) stuck in the kernel (a FUSE daemon "
                f"that never answers, or a lock a container holds) left behind, not waited for: "
                f"pid {', '.join(map(str, report.left_behind))}"
            )
        report.duration_ms = (time.perf_counter() - t0) * 1000


def _forget_unused(
    state_dir: str,
    ours: dict[int, float],
    namespaces: dict[int, NsView],
    live_dev: int,
    fstype: str,
    proc_fd: int,
    age: float = 60.0,
) -> None:
    """Forget recorded devices no mount uses any more (after a full scan): the kernel hands a freed FUSE
    device number to the next FUSE mount, which may be anyone's. Records younger than `age` seconds stay
    (a daemon may have recorded its device after our scan)."""
    used = {m.dev for view in namespaces.values() for m in view.mounts} | {live_dev}
    used |= {m.dev for m in discovery.parse_ours(discovery.read_all("self/mountinfo", proc_fd), fstype)}
    now = time.time()
    devices.forget(state_dir, {dev for dev, when in ours.items() if dev not in used and now - when > age})


def _find_stale(
    fstype: str,
    proc_fd: int,
    itself: list[tuple[int, int]],
    host_ns: int,
    everyone: bool,
    live_dev: int,
    stale_devs: set[int] | None,
    probe_timeout: float,
    report: RemountReport,
    ours: dict[int, float] | None = None,
    state_dir: str = "",
    held: dict[str, int] | None = None,
) -> tuple[dict[int, NsView], set[int]]:
    """Discover the namespaces (registered ones through their init first) and decide which devices are
    stale: `stale_devs` if given, else those of `ours` (None: any) the prober finds dead (it runs while
    discovery scans). Devices not ours are not even probed: their daemon is a container's, and may never
    answer. A device an earlier run's probe is still stuck on (`held`) is not asked again."""
    held = held or {}
    skip = {live_dev}
    for key, pid in held.items():
        if key.startswith("dev-"):
            major, _, minor = key[4:].partition(":")
            dev = os.makedev(int(major), int(minor))
            skip.add(dev)
            report.warnings.append(
                f"device {fmt_dev(dev)}: a probe by an earlier run (pid {pid}) is still stuck "
                "on it; not asked again, its binds left alone"
            )
    prober = (
        None
        if stale_devs is not None
        else discovery.Prober(proc_fd, skip=skip, timeout=probe_timeout, only=None if ours is None else set(ours))
    )
    t1 = time.perf_counter()
    try:
        namespaces = discovery.discover(
            fstype, proc_fd, itself, host_ns, everyone=everyone, on_found=prober.watch if prober else None
        )
    finally:
        t2 = time.perf_counter()
        states = prober.results() if prober else {}
        if prober and prober.left_behind and state_dir:
            stuck.record(state_dir, {stuck.dev_key(dev): pid for dev, pid in prober.left_behind.items()})
    report.phases_ms.update(discover=(t2 - t1) * 1000, probe=(time.perf_counter() - t2) * 1000)
    if prober is None:
        return namespaces, set(stale_devs or ()) - {live_dev}
    if ours is not None:
        foreign: dict[int, int] = {}
        for view in namespaces.values():
            for m in top_mounts(view.mounts).values():
                if m.dev != live_dev and m.dev not in ours:
                    foreign[m.dev] = foreign.get(m.dev, 0) + 1
        for dev, n in sorted(foreign.items()):
            report.warnings.append(
                f"device {fmt_dev(dev)} ({n} mount(s) of {fstype}) is not recorded as ours in "
                f"{state_dir}/{devices.DEVICES}: left alone (--any-device acts on it)"
            )
    for dev, state in sorted(states.items()):
        if state not in (discovery.DEAD, discovery.LIVE):
            report.warnings.append(
                f"connection {fmt_dev(dev)} is {state} (probed through pid "
                f"{prober.samples[dev][0]}); its binds were left alone"
            )
    return namespaces, {dev for dev, state in states.items() if state == discovery.DEAD}


def _execute(
    todo: list[Job],
    live_root: str,
    live_dev: int,
    live_attrs: int,
    live_shared: bool,
    beneath: bool,
    proc_fd: int,
    jobs: int | None,
    timeout: float,
    threads: int = THREADS,
    state_dir: str | None = None,
) -> list[NamespaceReport]:
    if not todo:
        return []
    sources = open_sources(live_root, {f.source for j in todo for f in j.fixes})
    ctx = Context(proc_fd, live_dev, live_attrs, live_shared, sources, beneath)
    left: dict[int, int] = {}
    try:
        return run_jobs(ctx, todo, jobs or _default_workers(len(todo)), timeout, threads, left)
    finally:
        ctx.close()
        if left and state_dir:
            stuck.record(state_dir, {stuck.ns_key(mntns): pid for mntns, pid in left.items()})


# --- attach: bind into a container that has none -----------------------------------------------------------


def attach(
    pid: int,
    live_root: str,
    binds: Sequence[tuple[str, ...]],
    *,
    root: str | None = None,
    fstype: str = FSTYPE,
    optional: Iterable[str] = (),
    cid: str | None = None,
    state_dir: str | None = None,
    timeout: float = 5.0,
    beneath: bool | None = None,
) -> NamespaceReport:
    """Bind files of the live mount at `live_root` into the running container whose init is `pid`.

    `binds` are (source, target[, flags]) with source relative to the filesystem root ("proc/meminfo"),
    target inside the container ("/proc/meminfo") and flags per-mount options ("ro,nosuid,nodev"; default:
    the live mount's). Targets are resolved inside the container's root without following symlinks; `root`
    is that root's path inside the container's mount namespace when /proc/PID/root is not it yet (an OCI
    hook at createRuntime passes the not-yet-pivoted rootfs). A target already on the live connection is
    left alone (never stacked); one that is missing is an error unless listed in `optional`.
    Holds the remount lock when `state_dir` is given. Returns the report; raises procfs.ProcessGone if the
    pid does not exist, AttachError (an OSError) if any target was refused or failed.
    """
    children.reap_left_behind()
    proc_fd = discovery.open_proc()
    lock_fd = _lock(state_dir, 30.0) if state_dir else -1
    try:
        start_time, mntns = discovery.identity(pid, proc_fd)
        if start_time is None or mntns is None:
            raise procfs.ProcessGone(pid)
        if mntns == os.stat("self/ns/mnt", dir_fd=proc_fd).st_ino:
            raise OSError(errno.EPERM, f"pid {pid} is in our own mount namespace, not a container's")
        live_dev, live_attrs, live_shared = live_mount(live_root, fstype, proc_fd)
        view = discovery.scan(fstype, proc_fd, pids=[pid]).get(mntns)
        tops = top_mounts(view.mounts if view else ())
        prefix = root.rstrip("/") if root else ""
        optional = frozenset(optional)
        fixes, refusals = [], []
        for bind in binds:
            source, target, flags = (tuple(bind) + ("",))[:3]
            target = "/" + target.lstrip("/")
            m = tops.get(prefix + target)
            if m is not None and m.dev != live_dev:
                refusals.append(
                    TargetError(
                        target,
                        errno.EBUSY,
                        f"already bound to connection {fmt_dev(m.dev)}; `remount` repairs stale binds",
                    )
                )
            elif m is None:
                fixes.append(
                    Fix(
                        source,
                        target,
                        ATTACH,
                        None,
                        sc.attrs_from_options(flags) if flags else None,
                        target in optional,
                    )
                )
        job = Job(cid or f"pid:{pid}", pid, mntns, fixes, start_time, refusals, root)
        rep = (
            _execute(
                [job],
                live_root,
                live_dev,
                live_attrs,
                live_shared,
                use_beneath(beneath),
                proc_fd,
                1,
                timeout,
                state_dir=state_dir,
            )
            or [NamespaceReport(job.id, pid, mntns, REFUSED if refusals else ALREADY_LIVE, errors=refusals)]
        )[0]
        if rep.action == GONE:
            raise procfs.ProcessGone(pid)
        if not rep.ok:
            raise AttachError(rep)
        return rep
    finally:
        _unlock(lock_fd)
        os.close(proc_fd)
