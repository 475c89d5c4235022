"""The steps of a repair inside one container's mount namespace (run by a pool worker's thread, which
starts and ends in the host's namespace): clone the live file, enter, resolve the target without following
symlinks, put the clone beneath the stale mount and detach that, come back, verify from the host.

See engine's docstring for the whole sequence and why each step is safe; every step here is an fd-based
syscall that never waits for a FUSE daemon.
"""

from __future__ import annotations

import errno
import os
import time

from lxcfs_guard.kernel import procfs
from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.remount import discovery
from lxcfs_guard.remount.plan import ATTACH, BENEATH, DETACH, UNCOVER, Fix, Job
from lxcfs_guard.remount.report import (
    ALREADY_LIVE,
    FAILED,
    GONE,
    REFUSED,
    REPAIRED,
    NamespaceReport,
    TargetError,
    fmt_dev,
)

_S_IFMT = 0o170000
_S_IFREG = 0o100000
_S_IFDIR = 0o040000
_S_IFLNK = 0o120000
_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_SYMLINKS
_O_PATH = os.O_PATH | os.O_CLOEXEC
_MOVE = sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH
_AT_FDCWD = -100
_CLONE = sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH


class _Refusal(Exception):
    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_
        self.message = message


class _Vanished(Exception):
    """The stale mount's target no longer resolves from the pid's root: the namespace changed since
    discovery read it (a runtime's init that pivot_root'ed meanwhile, a directory removed). Nothing is
    left there to repair."""


class Context:
    """What every worker inherits through fork: fds opened once in the host namespace."""

    def __init__(
        self,
        proc_fd: int,
        live_dev: int,
        live_attrs: int,
        live_shared: bool,
        sources: dict[str, int | OSError],
        beneath: bool,
    ) -> None:
        self.proc_fd = proc_fd
        self.host_ns_fd = os.open("self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        self.host_ns = os.fstat(self.host_ns_fd).st_ino
        self.live_dev = live_dev
        self.live_attrs = live_attrs
        self.live_shared = live_shared
        self.sources = sources
        self.kinds = {src: source_kind(fd) for src, fd in sources.items() if isinstance(fd, int)}
        self.beneath = beneath
        self.fd_dir = -1  # the worker's own /proc/self/fd, opened after fork

    def close(self) -> None:
        os.close(self.host_ns_fd)
        for fd in self.sources.values():
            if isinstance(fd, int):
                os.close(fd)


def _start_time(ctx: Context, pid: int) -> int:
    return procfs.parse_stat_start_time(discovery.read_all(f"{pid}/stat", ctx.proc_fd))


def _clone(ctx: Context, fix: Fix) -> int:
    src = ctx.sources.get(fix.source)
    if not isinstance(src, int):
        err = src.errno if isinstance(src, OSError) else errno.ENOENT
        raise OSError(err, f"the live filesystem has no {fix.source!r}")
    clone = sc.open_tree("", _CLONE, dirfd=src)
    # Private: a clone of a shared mount (any mount on a systemd host) is a peer of it, and would make the
    # binds of every container one peer group, so that detaching one container's stale mount propagated
    # into the others. Flags: those the old bind had, set before the clone is visible anywhere.
    attrs = ctx.live_attrs if fix.attrs is None else fix.attrs
    if ctx.live_shared or attrs != ctx.live_attrs:
        try:
            sc.mount_setattr(clone, "", sc.AT_EMPTY_PATH, attrs, sc.ALL_MOUNT_ATTRS & ~attrs, sc.MS_PRIVATE)
        except OSError:
            os.close(clone)
            raise
    return clone


def _resolve(rootfd: int, target: str) -> int:
    try:
        # No O_NOFOLLOW: with it, O_PATH would open a trailing symlink itself instead of failing with ELOOP.
        return sc.openat2(rootfd, target.lstrip("/") or ".", _O_PATH, _RESOLVE)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Refusal(errno.ELOOP, "a symlink on the path inside the container; not followed") from None
        if e.errno == errno.EXDEV:
            raise _Refusal(errno.EXDEV, "the path leaves the container's root") from None
        raise


_KIND = {_S_IFREG: "a file", _S_IFDIR: "a directory"}


def _check_kind(mode: int, want: int | None) -> None:
    """A target must be a regular file or a directory, and of the same kind as the live source (`want`;
    None: either). A bind whose kind changed (a file bind that is now a directory, or the reverse) is
    not ours to reinterpret: refused."""
    kind = mode & _S_IFMT
    if kind == _S_IFLNK:
        raise _Refusal(errno.ELOOP, "the target is a symlink; not followed")
    if kind not in _KIND:
        raise _Refusal(errno.EINVAL, f"the target is neither a file nor a directory (mode {oct(mode)})")
    if want is not None and kind != want:
        raise _Refusal(
            errno.EISDIR if kind == _S_IFDIR else errno.ENOTDIR,
            f"the target is {_KIND[kind]}, the live source {_KIND.get(want, oct(want))}: "
            "its kind changed; not replaced",
        )


def source_kind(fd: int) -> int:
    """S_IFREG or S_IFDIR (or another S_IFMT value) of a live source, from cached attributes."""
    return sc.statx_cached(fd)[0] & _S_IFMT


def _apply(ctx: Context, rootfd: int, fix: Fix, clone: int) -> bool:
    """Inside the container's namespace: make `fix.target` serve `clone`. False if it already did."""
    step = "resolving the target"
    try:
        tfd = _resolve(rootfd, fix.target)
    except FileNotFoundError:
        if fix.how == ATTACH:
            raise
        raise _Vanished() from None
    try:
        mode, dev = sc.statx_cached(tfd)
        if dev == ctx.live_dev and not (fix.how == UNCOVER and fix.expect_dev == dev):
            return False
        want = None if fix.how in (UNCOVER, DETACH) else ctx.kinds.get(fix.source)
        _check_kind(mode, want)
        if fix.how == ATTACH:
            step = "move_mount onto the target"
            sc.move_mount(clone, tfd, "", _MOVE)
            return True
        if dev != fix.expect_dev:  # detached, or covered by someone else's mount, since discovery read it:
            raise _Vanished()  # nothing of ours is left on top there (never replace another's mount)
        if fix.how in (UNCOVER, DETACH) or ctx.beneath:
            if fix.how == BENEATH:
                step = "move_mount beneath the stale mount"
                sc.move_mount(clone, tfd, "", _MOVE | sc.MOVE_MOUNT_BENEATH)
            step = "detaching the stale mount"
            sc.umount2(str(tfd), sc.MNT_DETACH)  # cwd is our /proc/self/fd: exactly the mount tfd names
            return True
        step = "detaching the stale mount"
        sc.umount2(str(tfd), sc.MNT_DETACH)
        step = "resolving the uncovered target"
        under = _resolve(rootfd, fix.target)
        try:
            _check_kind(sc.statx_cached(under)[0], want)
            step = "move_mount onto the uncovered target"
            sc.move_mount(clone, under, "", _MOVE)
        finally:
            os.close(under)
        return True
    except OSError as e:
        code = e.errno or errno.EIO  # every OSError here is a syscall's; EIO only for the type checker
        raise OSError(code, f"{step}: {os.strerror(code)}") from None
    finally:
        os.close(tfd)


def run_job(ctx: Context, job: Job) -> NamespaceReport:
    """Repair one namespace (runs in a worker, which starts and ends in the host's namespace)."""
    t0 = time.perf_counter()
    rep = NamespaceReport(job.id, job.pid, job.mntns, FAILED, errors=list(job.refusals))
    refused = bool(job.refusals)
    failed = False
    fds: list[int] = []
    try:
        # Root first, namespace second, identity last: a registered pid whose start time still matches
        # after both opens was that process all along (a pid never comes back); for a discovered one the
        # namespace inode is the identity, and whatever process the fds came from was in that namespace.
        try:
            rootfd = -1
            if job.root is None:
                rootfd = os.open(f"{job.pid}/root", _O_PATH | os.O_DIRECTORY, dir_fd=ctx.proc_fd)
                fds.append(rootfd)
            nsfd = os.open(f"{job.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=ctx.proc_fd)
            fds.append(nsfd)
            if job.start_time is not None and _start_time(ctx, job.pid) != job.start_time:
                raise ProcessLookupError(errno.ESRCH, f"pid {job.pid} was reused")
        except (FileNotFoundError, ProcessLookupError) as e:
            rep.action = GONE
            rep.errors.append(TargetError("-", errno.ESRCH, str(e.strerror or "the process has exited")))
            return rep
        ino = os.fstat(nsfd).st_ino
        if ino != job.mntns:
            rep.action = GONE
            rep.errors.append(TargetError("-", errno.ESRCH, f"pid {job.pid} is now in mount namespace {ino}"))
            return rep
        if ino == ctx.host_ns:
            rep.action = REFUSED
            rep.errors.append(TargetError("-", errno.EPERM, "the host's own mount namespace is never entered"))
            return rep
        clones: list[tuple[Fix, int]] = []
        for fix in job.fixes:
            try:
                clones.append((fix, -1 if fix.how in (UNCOVER, DETACH) else _clone(ctx, fix)))
                if clones[-1][1] >= 0:
                    fds.append(clones[-1][1])
            except OSError as e:
                failed = True
                rep.errors.append(TargetError(fix.target, e.errno or errno.EIO, f"cloning the live file: {e.strerror}"))
        done: list[Fix] = []
        vanished = 0
        sc.setns(nsfd, sc.CLONE_NEWNS)
        try:
            os.fchdir(ctx.fd_dir)
            if job.root is not None:
                rootfd = os.open(job.root, _O_PATH | os.O_DIRECTORY)
                fds.append(rootfd)
            for fix, clone in clones:
                try:
                    if _apply(ctx, rootfd, fix, clone):
                        done.append(fix)
                except _Refusal as r:
                    refused = True
                    rep.errors.append(TargetError(fix.target, r.errno, r.message))
                except _Vanished:
                    vanished += 1
                    rep.errors.append(
                        TargetError(
                            fix.target,
                            errno.ENOENT,
                            "the stale mount is no longer there "
                            "(the namespace changed since it was read): nothing to repair",
                        )
                    )
                except OSError as e:
                    if not (fix.optional and e.errno == errno.ENOENT):
                        failed = True
                        rep.errors.append(TargetError(fix.target, e.errno or errno.EIO, str(e.strerror)))
        finally:
            try:
                sc.setns(ctx.host_ns_fd, sc.CLONE_NEWNS)
            except OSError:  # pragma: no cover - stranded in the container: let the parent replace us
                os._exit(3)
        for fix in done:  # verify from the host: the target, resolved afresh, is on the live device
            try:
                vfd = _resolve(rootfd, fix.target)
                try:
                    dev = sc.statx_cached(vfd)[1]
                finally:
                    os.close(vfd)
            except (OSError, _Refusal) as e:
                dev, why = -1, f"verifying: {e}"
            else:
                why = f"verifying: still on device {fmt_dev(dev)}"
            if fix.how == DETACH and dev not in (-1, fix.expect_dev):
                rep.detached.append(fix.target)  # (off any device of ours: what was under the copy)
            elif fix.how != DETACH and dev == ctx.live_dev:
                rep.repaired.append(fix.target)
            else:
                failed = True
                rep.errors.append(TargetError(fix.target, errno.EIO, why))
        changed = rep.repaired or rep.detached
        rep.action = FAILED if failed else REFUSED if refused else REPAIRED if changed else ALREADY_LIVE
        if vanished == len(job.fixes) and job.start_time is None and not job.refusals:
            rep.action = GONE  # (a discovered namespace only: GONE unregisters a registered container)
        return rep
    finally:
        for fd in fds:
            os.close(fd)
        rep.duration_ms = (time.perf_counter() - t0) * 1000
