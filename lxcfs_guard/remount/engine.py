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

Scoping: only mounts on a *stale* device are touched: a device in `stale_devs` if the caller names them
(zero-downtime reload: the old daemon still answers), else a device whose connection is dead (statfs gives
ENOTCONN; see discovery.Prober). Mounts of any other live daemon are never touched, and the caller's own
mount namespace is never entered.
"""

from __future__ import annotations

import errno
import fcntl
import marshal
import os
import select
import time
from collections.abc import Iterable, Sequence

from lxcfs_guard import config
from lxcfs_guard.kernel import procfs
from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.remount import discovery
from lxcfs_guard.remount.plan import ATTACH, UNCOVER, Fix, Job, NsView, plan, top_mounts
from lxcfs_guard.remount.registry import Entry, Registry
from lxcfs_guard.remount.report import (
    ALREADY_LIVE, FAILED, GONE, REFUSED, REPAIRED, NamespaceReport, RemountReport, TargetError, fmt_dev,
)


FSTYPE = config.FSTYPE
LOCKNAME = "remount.lock"
ENV_NO_BENEATH = "LXCFS_GUARD_NO_BENEATH"  # "1": use detach-then-move even where BENEATH exists (tests, 6.1 parity)
MODE_BENEATH = "beneath"
MODE_DETACH_MOVE = "detach-move"

_S_IFMT = 0o170000
_S_IFREG = 0o100000
_S_IFDIR = 0o040000
_S_IFLNK = 0o120000
_RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_SYMLINKS
_O_PATH = os.O_PATH | os.O_CLOEXEC
_MOVE = sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH
_AT_FDCWD = -100
_CLONE = sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH


class AttachError(OSError):
    """attach() left something unbound; `report` says what and why (errno of the first error)."""

    def __init__(self, report: NamespaceReport) -> None:
        first = report.errors[0] if report.errors else TargetError("-", errno.EIO, report.action)
        super().__init__(first.errno, "; ".join(map(str, report.errors)) or report.action)
        self.report = report


class _Refusal(Exception):
    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_
        self.message = message


class _Context:
    """What every worker inherits through fork: fds opened once in the host namespace."""

    def __init__(self, proc_fd: int, live_dev: int, live_attrs: int, live_shared: bool,
                 sources: dict[str, int | OSError], beneath: bool) -> None:
        self.proc_fd = proc_fd
        self.host_ns_fd = os.open("self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        self.host_ns = os.fstat(self.host_ns_fd).st_ino
        self.live_dev = live_dev
        self.live_attrs = live_attrs
        self.live_shared = live_shared
        self.sources = sources
        self.beneath = beneath
        self.fd_dir = -1  # the worker's own /proc/self/fd, opened after fork

    def close(self) -> None:
        os.close(self.host_ns_fd)
        for fd in self.sources.values():
            if isinstance(fd, int):
                os.close(fd)


# --- one namespace, inside a worker ---------------------------------------------------------------------


def _start_time(ctx: _Context, pid: int) -> int:
    return procfs.parse_stat_start_time(discovery.read_all(f"{pid}/stat", ctx.proc_fd))


def _clone(ctx: _Context, fix: Fix) -> int:
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


def _check_file(mode: int) -> None:
    kind = mode & _S_IFMT
    if kind == _S_IFLNK:
        raise _Refusal(errno.ELOOP, "the target is a symlink; not followed")
    if kind == _S_IFDIR:
        raise _Refusal(errno.EISDIR, "the target is a directory, not a file")
    if kind != _S_IFREG:
        raise _Refusal(errno.EINVAL, f"the target is not a regular file (mode {oct(mode)})")


def _apply(ctx: _Context, rootfd: int, fix: Fix, clone: int) -> bool:
    """Inside the container's namespace: make `fix.target` serve `clone`. False if it already did."""
    step = "resolving the target"
    tfd = _resolve(rootfd, fix.target)
    try:
        mode, dev = sc.statx_cached(tfd)
        if dev == ctx.live_dev:
            return False
        _check_file(mode)
        if fix.how == ATTACH:
            step = "move_mount onto the target"
            sc.move_mount(clone, tfd, "", _MOVE)
            return True
        if dev != fix.expect_dev:
            raise _Refusal(errno.EBUSY, f"the target is now on device {fmt_dev(dev)}, "
                                        f"not the stale {fmt_dev(fix.expect_dev)}")
        if fix.how == UNCOVER or ctx.beneath:
            if fix.how != UNCOVER:
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
            _check_file(sc.statx_cached(under)[0])
            step = "move_mount onto the uncovered target"
            sc.move_mount(clone, under, "", _MOVE)
        finally:
            os.close(under)
        return True
    except OSError as e:
        raise OSError(e.errno, f"{step}: {os.strerror(e.errno)}") from None
    finally:
        os.close(tfd)


def run_job(ctx: _Context, job: Job) -> NamespaceReport:
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
                clones.append((fix, -1 if fix.how == UNCOVER else _clone(ctx, fix)))
                if clones[-1][1] >= 0:
                    fds.append(clones[-1][1])
            except OSError as e:
                failed = True
                rep.errors.append(TargetError(fix.target, e.errno, f"cloning the live file: {e.strerror}"))
        done: list[Fix] = []
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
                except OSError as e:
                    if not (fix.optional and e.errno == errno.ENOENT):
                        failed = True
                        rep.errors.append(TargetError(fix.target, e.errno, str(e.strerror)))
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
            if dev == ctx.live_dev:
                rep.repaired.append(fix.target)
            else:
                failed = True
                rep.errors.append(TargetError(fix.target, errno.EIO, why))
        rep.action = FAILED if failed else REFUSED if refused else REPAIRED if rep.repaired else ALREADY_LIVE
        return rep
    finally:
        for fd in fds:
            os.close(fd)
        rep.duration_ms = (time.perf_counter() - t0) * 1000


# --- workers ----------------------------------------------------------------------------------------------
#
# A worker is a forked process running THREADS threads; each thread unshares its fs_struct (so it may setns
# on its own) and takes namespaces from a shared queue. Detaching a stale mount waits for an RCU grace
# period (tens of microseconds when the other CPUs are busy, as they are right after a daemon restart);
# threads waiting at once share one grace period, which is most of the gain. Python work is serialised by
# the GIL but small. The worker tells the parent when a namespace starts and how it ended; the parent owns
# the deadlines.

THREADS = 4


def _frame(kind: bytes, index: int, body: bytes = b"") -> bytes:
    return kind + index.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body


def _encode(rep: NamespaceReport) -> bytes:
    return marshal.dumps((rep.id, rep.pid, rep.mntns, rep.action, rep.repaired,
                          [(e.target, e.errno, e.message) for e in rep.errors], rep.duration_ms))


def _decode(body: bytes) -> NamespaceReport:
    cid, pid, mntns, action, repaired, errors, ms = marshal.loads(body)
    return NamespaceReport(cid, pid, mntns, action, repaired, [TargetError(*e) for e in errors], ms)


def _run_job_safe(ctx: _Context, job: Job) -> NamespaceReport:
    try:
        return run_job(ctx, job)
    except Exception as e:  # noqa: BLE001 - report it against the namespace, keep going
        return NamespaceReport(job.id, job.pid, job.mntns, FAILED,
                               errors=[TargetError("-", getattr(e, "errno", None) or errno.EIO,
                                                   f"{type(e).__name__}: {e}")])


def _worker_main(ctx: _Context, jobs: Sequence[Job], w: int, threads: int) -> None:  # pragma: no cover - child
    code = 0
    try:
        import _thread
        import sys

        # A thread back from a syscall waits for the GIL; by default the running thread keeps it for up
        # to 5 ms. Our threads spend their time in short syscalls: hand it over fast.
        sys.setswitchinterval(0.0001)

        ctx.fd_dir = os.open("self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=ctx.proc_fd)
        lock = _thread.allocate_lock()
        finished = _thread.allocate_lock()
        finished.acquire()
        queue = iter(range(len(jobs)))
        running = [min(threads, len(jobs))]

        def send(data: bytes) -> None:  # with `lock` held
            while data:
                data = data[os.write(w, data):]

        def loop() -> None:
            try:
                sc.unshare(sc.CLONE_FS)  # our own root and cwd: this thread may enter a namespace alone
                while True:
                    with lock:
                        i = next(queue, None)
                        if i is None:
                            return
                        send(_frame(b"S", i))
                    body = _encode(_run_job_safe(ctx, jobs[i]))
                    with lock:
                        send(_frame(b"D", i, body))
            finally:
                with lock:
                    running[0] -= 1
                    if running[0] == 0:
                        finished.release()

        for _ in range(running[0]):
            _thread.start_new_thread(loop, ())
        finished.acquire()
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


class _Worker:
    """The parent's view of one worker: its queue, which namespaces it started when, which it finished."""

    __slots__ = ("pid", "fd", "jobs", "started", "done", "buf", "spawned")

    def __init__(self, ctx: _Context, jobs: Sequence[Job], threads: int) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            os.close(r)
            _worker_main(ctx, jobs, w, threads)
        os.close(w)
        self.pid, self.fd, self.jobs, self.buf = pid, r, jobs, b""
        self.started: dict[int, float] = {}
        self.done: set[int] = set()
        self.spawned = time.monotonic()

    def reap(self) -> None:
        os.close(self.fd)
        os.waitpid(self.pid, 0)

    def in_flight(self) -> list[int]:
        return [i for i in self.started if i not in self.done]

    def feed(self, data: bytes) -> list[tuple[int, NamespaceReport]]:
        """Take bytes from the pipe; return the reports they complete."""
        self.buf += data
        out = []
        while len(self.buf) >= 9 and len(self.buf) >= 9 + (size := int.from_bytes(self.buf[5:9], "little")):
            kind, i, body = self.buf[:1], int.from_bytes(self.buf[1:5], "little"), self.buf[9:9 + size]
            self.buf = self.buf[9 + size:]
            if kind == b"S":
                self.started[i] = time.monotonic()
            else:
                self.done.add(i)
                out.append((i, _decode(body)))
        return out


def run_jobs(ctx: _Context, jobs: Sequence[Job], workers: int, timeout: float,
             threads: int = THREADS) -> list[NamespaceReport]:
    """Run `jobs` on up to `workers` forked workers of `threads` threads; each namespace gets `timeout`
    seconds from its start. A worker with a namespace past its deadline is killed: that namespace fails
    with ETIMEDOUT, any other it had under way fails as interrupted (a later run finishes it: see UNCOVER),
    and a new worker takes the ones it had not started. Reports come back in the order of `jobs`."""
    results: dict[int, NamespaceReport] = {}
    index = {id(job): i for i, job in enumerate(jobs)}
    active: dict[int, _Worker] = {}
    poller = select.poll()

    def spawn(queue: Sequence[Job]) -> None:
        if queue:
            wk = _Worker(ctx, queue, threads)
            active[wk.fd] = wk
            poller.register(wk.fd, select.POLLIN)

    def fail(job: Job, errno_: int, message: str, ms: float = 0.0) -> None:
        results[index[id(job)]] = NamespaceReport(job.id, job.pid, job.mntns, FAILED,
                                                  errors=[TargetError("-", errno_, message)], duration_ms=ms)

    def retire(wk: _Worker, late: int | None) -> None:
        poller.unregister(wk.fd)
        del active[wk.fd]
        if late is not None:
            os.kill(wk.pid, 9)
        wk.reap()
        now = time.monotonic()
        for i in wk.in_flight():
            if late is not None and wk.started[i] + timeout <= now:
                fail(wk.jobs[i], errno.ETIMEDOUT, f"this namespace did not finish within {timeout:g} s; worker killed",
                     timeout * 1000)
            elif late is not None:
                fail(wk.jobs[i], errno.EINTR, "interrupted: its worker was killed for another namespace's deadline")
            else:
                fail(wk.jobs[i], errno.EIO, "its worker exited before finishing it")
        rest = [job for i, job in enumerate(wk.jobs) if i not in wk.started]
        if wk.done or (late is not None and late >= 0):
            spawn(rest)
        else:  # the worker never finished anything: do not loop on it
            for job in rest:
                fail(job, errno.EIO, "the worker died before repairing anything")

    n = max(1, min(workers, len(jobs)))
    for k in range(n):
        spawn(jobs[k::n])
    while active:
        now = time.monotonic()
        deadlines = [t + timeout for wk in active.values() for i, t in wk.started.items() if i not in wk.done]
        deadlines += [wk.spawned + timeout for wk in active.values() if not wk.started]
        for fd, _ in poller.poll(max(0.0, min(deadlines, default=now + timeout) - now) * 1000):
            wk = active[fd]
            data = os.read(fd, 1 << 16)
            if not data:
                retire(wk, None)
                continue
            for i, rep in wk.feed(data):
                results[index[id(wk.jobs[i])]] = rep
        now = time.monotonic()
        for wk in list(active.values()):
            late = next((i for i, t in wk.started.items() if i not in wk.done and t + timeout <= now), None)
            if late is None and not wk.started and wk.spawned + timeout <= now:
                late = -1
            if late is not None:
                retire(wk, late)
    return [results[i] for i in range(len(jobs))]


# --- the run ----------------------------------------------------------------------------------------------


def _lock(state_dir: str, timeout: float) -> int:
    """flock on <state-dir>/remount.lock: runs (and attaches) take turns."""
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(state_dir, LOCKNAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(f"another remount holds {state_dir}/{LOCKNAME} for more than {timeout:g} s") from None
            time.sleep(0.005)


def live_mount(live_root: str, fstype: str, proc_fd: int) -> tuple[int, int, bool]:
    """(device, MOUNT_ATTR bits, shared?) of the live mount at `live_root`; OSError if it is dead or not
    ours. (A clone of a shared mount must be made private; of a private one it already is.)"""
    st = os.stat(live_root)  # ENOTCONN here means the "live" root is itself dead
    real = os.path.realpath(live_root)
    marker = f" - {fstype} ".encode()
    for line in discovery.read_all("self/mountinfo", proc_fd).split(b"\n"):
        if marker in line:
            m = procfs.parse_mountinfo_line(line.decode(errors="surrogateescape"))
            if m.mount_point == real and m.dev == st.st_dev:
                return st.st_dev, sc.attrs_from_options(m.mount_options), any(o.startswith("shared:") for o in m.optional)
    raise OSError(errno.ENOENT, f"no {fstype} mount at {live_root}")


def _open_sources(live_root: str, sources: Iterable[str]) -> dict[str, int | OSError]:
    """O_PATH fds of the live files, resolved beneath the live root (a mountinfo root column is data)."""
    out: dict[str, int | OSError] = {}
    rootfd = os.open(live_root, _O_PATH | os.O_DIRECTORY)
    try:
        for src in sources:
            if src not in out:
                try:
                    out[src] = sc.openat2(rootfd, src or ".", _O_PATH,
                                          sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_XDEV)
                except OSError as e:
                    out[src] = e
    finally:
        os.close(rootfd)
    return out


def _use_beneath(beneath: bool | None) -> bool:
    if beneath is None:
        beneath = os.environ.get(ENV_NO_BENEATH, "") not in ("1", "yes", "true")
    return beneath and sc.move_mount_beneath_supported()


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
) -> RemountReport:
    """Repair every container whose binds of `fstype` point at a stale connection, cloning from the live
    mount at `live_root` (the host mountpoint, or a standby's private mountpoint).

    A mount is repaired if its device differs from `live_root`'s and is in `stale_devs` when given (a
    reload: the old daemon still answers), else if its connection is dead (statfs gives ENOTCONN). Mounts
    of any other live connection are never touched, nor is the caller's own mount namespace.
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
    proc_fd = discovery.open_proc()
    try:
        lock_fd = _lock(state_dir, lock_timeout)
        try:
            live_dev, live_attrs, live_shared = live_mount(live_root, fstype, proc_fd)
        except OSError as e:
            report.error = f"live mount {live_root}: {e.strerror or e}"
            return report
        report.live_dev = live_dev
        registry = Registry(state_dir)
        entries = registry.load()
        if registry.problem:
            report.warnings.append(registry.problem)
        host_ns = os.stat("self/ns/mnt", dir_fd=proc_fd).st_ino
        wanted = ids if ids is not None else sorted(entries)
        selected: list[Entry] = [entries[cid] for cid in wanted if cid in entries]
        report.namespaces += [NamespaceReport(cid, 0, 0, FAILED, errors=[
            TargetError("-", errno.ENOENT, "no such registered container")]) for cid in wanted if cid not in entries]
        identities = {e.id: discovery.identity(e.pid, proc_fd) for e in selected}
        itself = [(e.pid, e.mntns) for e in selected if identities[e.id][1] == e.mntns]
        namespaces, stale = _find_stale(fstype, proc_fd, itself, host_ns, ids is None, live_dev, stale_devs,
                                        probe_timeout, report)
        t3 = time.perf_counter()
        todo, known = plan(namespaces, selected, identities, live_dev, stale, host_ns)
        report.mode = MODE_BENEATH if _use_beneath(beneath) else MODE_DETACH_MOVE
        if dry_run:
            report.namespaces += known
            report.namespaces += [NamespaceReport(j.id, j.pid, j.mntns, REFUSED if j.refusals else REPAIRED,
                                                  [f.target for f in j.fixes], list(j.refusals)) for j in todo]
            return report
        t4 = time.perf_counter()
        report.phases_ms["plan"] = (t4 - t3) * 1000
        results = _execute(todo, live_root, live_dev, live_attrs, live_shared, report.mode == MODE_BENEATH,
                           proc_fd, jobs, timeout, threads)
        report.phases_ms["repair"] = (time.perf_counter() - t4) * 1000
        report.namespaces += known + results
        gone_ids = {ns.id for ns in report.namespaces if ns.action == GONE}
        gone = {e.id: (e.pid, e.start_time) for e in selected if e.id in gone_ids}
        if gone:
            registry.remove_if(gone)
        return report
    except TimeoutError as e:
        report.error = str(e)
        return report
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
        os.close(proc_fd)
        report.duration_ms = (time.perf_counter() - t0) * 1000


def _find_stale(fstype: str, proc_fd: int, itself: list[tuple[int, int]], host_ns: int, everyone: bool, live_dev: int,
                stale_devs: set[int] | None, probe_timeout: float,
                report: RemountReport) -> tuple[dict[int, NsView], set[int]]:
    """Discover the namespaces (registered ones through their init first) and decide which devices are
    stale: `stale_devs` if given, else those the prober finds dead (it runs while discovery scans)."""
    prober = None if stale_devs is not None else discovery.Prober(proc_fd, skip=(live_dev,), timeout=probe_timeout)
    t1 = time.perf_counter()
    try:
        namespaces = discovery.discover(fstype, proc_fd, itself, host_ns, everyone=everyone,
                                        on_found=prober.watch if prober else None)
    finally:
        t2 = time.perf_counter()
        states = prober.results() if prober else {}
    report.phases_ms.update(discover=(t2 - t1) * 1000, probe=(time.perf_counter() - t2) * 1000)
    if prober is None:
        return namespaces, set(stale_devs or ()) - {live_dev}
    for dev, state in sorted(states.items()):
        if state not in (discovery.DEAD, discovery.LIVE):
            report.warnings.append(f"connection {fmt_dev(dev)} is {state} (probed through pid "
                                   f"{prober.samples[dev][0]}); its binds were left alone")
    return namespaces, {dev for dev, state in states.items() if state == discovery.DEAD}


def _execute(todo: list[Job], live_root: str, live_dev: int, live_attrs: int, live_shared: bool, beneath: bool,
             proc_fd: int, jobs: int | None, timeout: float, threads: int = THREADS) -> list[NamespaceReport]:
    if not todo:
        return []
    sources = _open_sources(live_root, {f.source for j in todo for f in j.fixes})
    ctx = _Context(proc_fd, live_dev, live_attrs, live_shared, sources, beneath)
    try:
        return run_jobs(ctx, todo, jobs or _default_workers(len(todo)), timeout, threads)
    finally:
        ctx.close()


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
                refusals.append(TargetError(target, errno.EBUSY, f"already bound to connection "
                                            f"{fmt_dev(m.dev)}; `remount` repairs stale binds"))
            elif m is None:
                fixes.append(Fix(source, target, ATTACH, None, sc.attrs_from_options(flags) if flags else None,
                                 target in optional))
        job = Job(cid or f"pid:{pid}", pid, mntns, fixes, start_time, refusals, root)
        rep = (_execute([job], live_root, live_dev, live_attrs, live_shared, _use_beneath(beneath), proc_fd, 1,
                        timeout)
               or [NamespaceReport(job.id, pid, mntns, REFUSED if refusals else ALREADY_LIVE, errors=refusals)])[0]
        if rep.action == GONE:
            raise procfs.ProcessGone(pid)
        if not rep.ok:
            raise AttachError(rep)
        return rep
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
        os.close(proc_fd)


# --- swap_mount: the host side of a restart -----------------------------------------------------------------


def _top_mount(path: str) -> procfs.MountInfo | None:
    """The topmost mount on `path` in our own namespace (the one no other mount there sits on: a mount
    slid beneath is listed after the one above it), None if nothing is mounted there."""
    with open("/proc/self/mountinfo", "rb") as f:
        found = [m for m in (procfs.parse_mountinfo_line(line.decode(errors="surrogateescape"))
                             for line in f if f" {path} ".encode() in line) if m.mount_point == path]
    under = {m.parent_id for m in found}
    tops = [m for m in found if m.mount_id not in under]
    return tops[-1] if tops else None


def swap_mount(live_path: str, target: str) -> None:
    """In the caller's own mount namespace, make `target` serve the mount at `live_path` (a new or standby
    instance's private mountpoint): a clone of it goes *under* whatever is mounted at `target`
    (MOVE_MOUNT_BENEATH), then the old top is detached, so a reader on the host never finds the mountpoint
    empty. Without BENEATH (kernel < 6.5): detach the old top, then move the clone in. With nothing mounted
    at `target`, or only mounts of another type (the hostPath volume a DaemonSet's pod has there), the clone
    is attached on top. `live_path` stays mounted; the caller may detach it."""
    clone = sc.open_tree(live_path, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
    try:
        real = os.path.realpath(target)
        top, live = _top_mount(real), _top_mount(os.path.realpath(live_path))
        if top is None or live is None or top.fstype != live.fstype:
            # nothing of ours there, maybe a foreign mount (a pod's hostPath volume, a shared bind that
            # propagates to the host): attach on top of it, never detach what is not ours
            sc.move_mount(clone, _AT_FDCWD, real, sc.MOVE_MOUNT_F_EMPTY_PATH)
            return
        if _use_beneath(None):
            tfd = os.open(real, _O_PATH)
            try:
                sc.move_mount(clone, tfd, "", _MOVE | sc.MOVE_MOUNT_BENEATH)
                sc.umount2(f"/proc/self/fd/{tfd}", sc.MNT_DETACH)
            finally:
                os.close(tfd)
        else:
            sc.umount2(real, sc.MNT_DETACH)
            sc.move_mount(clone, _AT_FDCWD, real, sc.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(clone)
