"""Discovery: what the kernel shows, whoever made it. Every mount namespace on the host that holds a
mount of our fstype, with one live pid in it, read as cheaply as possible: one stat of /proc/PID/ns/mnt per
process to dedupe namespaces, one read of /proc/PID/mountinfo per namespace (split over two processes when
there are many), and only the lines of our fstype are parsed. This finds binds nobody registered
(Kubernetes hostPath volumes, hand-made binds).

Plus the liveness probe (Prober): a dead connection answers every request with ENOTCONN at once, a live
one needs its daemon, and a hung daemon (SIGSTOPped, wedged) never answers; so each distinct device is
asked by statfs from a forked child, never from this process, and a child seen waiting in the kernel's
FUSE queue is known to have a daemon behind it without waiting any longer.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterable

from lxcfs_guard.kernel import procfs, syscalls
from lxcfs_guard.kernel.files import DEAD_ERRNOS
from lxcfs_guard.remount import children
from lxcfs_guard.remount.plan import Mount, NsView, top_mounts

_FSTATFS = {"x86_64": b"138", "aarch64": b"44"}.get(os.uname().machine)  # fstatfs(2): /proc/PID/syscall's number

DEAD = "dead"
LIVE = "live"
HUNG = "hung"


def open_proc() -> int:
    """An fd on the host's /proc: every later lookup is relative to it, so it does not matter which root
    or mount namespace the caller is in when it uses it."""
    return os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_mount_root(path: str) -> int:
    """An O_PATH fd on the mount at `path`, got without a request to its daemon: the parent directory is
    resolved (not ours), and stepping onto a mount's root dentry asks the filesystem nothing (a mount's
    root is never revalidated); its cached attributes (syscalls.statx_cached) cost no request either."""
    parent, name = os.path.split(os.path.abspath(path).rstrip("/") or "/")
    return os.open(os.path.join(os.path.realpath(parent), name), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def read_all(name: str, dir_fd: int) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_ours(data: bytes, fstype: str) -> list[Mount]:
    """The mounts of `fstype` in a mountinfo text (pure). Lines of other types are skipped unparsed: a
    container's mountinfo is mostly the host's mounts and this runs once per namespace."""
    marker = f" - {fstype} ".encode()
    if marker not in data:
        return []
    out = []
    lines = data.split(b"\n")
    parents = set()
    for raw in lines:
        fields = raw.split(b" ", 2)
        if len(fields) > 2 and fields[1].isdigit():
            parents.add(int(fields[1]))
    for raw in lines:
        if marker in raw:
            mi = procfs.parse_mountinfo_line(raw.decode(errors="surrogateescape"))
            out.append(
                Mount(
                    mi.mount_id, mi.parent_id, mi.dev, mi.root, mi.mount_point, mi.mount_options, mi.mount_id in parents
                )
            )
    return out


def _read_part(
    fstype: str, proc_fd: int, firsts: Iterable[tuple[int, int]], on_found: Callable[[NsView], None] | None
) -> dict[int, NsView]:
    found: dict[int, NsView] = {}
    for ino, pid in firsts:
        try:
            mounts = parse_ours(read_all(f"{pid}/mountinfo", proc_fd), fstype)
        except OSError:  # exited meanwhile
            continue
        if mounts:
            found[ino] = view = NsView(ino, pid, mounts)
            if on_found is not None:
                on_found(view)
    return found


def scan(
    fstype: str,
    proc_fd: int,
    *,
    pids: Iterable[int] | None = None,
    skip: Iterable[int] = (),
    on_found: Callable[[NsView], None] | None = None,
    split_above: int = 64,
) -> dict[int, NsView]:
    """Mount namespaces (by inode) holding a mount of `fstype`, each with the first pid seen in it.

    `pids` limits the scan (default: every process); namespaces in `skip` (the caller's own) are not read.
    One stat of /proc/PID/ns/mnt per process finds each namespace's first pid, and only that pid's
    mountinfo is read: a process chrooted elsewhere in a namespace could hide binds outside its root, but
    containers keep their init at their root, and the init is the pid met first. `on_found` sees each
    namespace as soon as it is read (the prober starts asking about its devices while the scan goes on).

    A mountinfo read costs ~40 us of kernel time; above `split_above` namespaces a forked child reads
    every other one, on another CPU, and hands its namespaces back through a pipe.
    """
    seen = set(skip)
    firsts: list[tuple[int, int]] = []
    for pid in sorted(int(n) for n in os.listdir(proc_fd) if n.isdigit()) if pids is None else pids:
        try:
            ino = os.stat(f"{pid}/ns/mnt", dir_fd=proc_fd).st_ino
        except OSError:  # exited meanwhile, or a kernel thread we may not look into
            continue
        if ino not in seen:
            seen.add(ino)
            firsts.append((ino, pid))
    if len(firsts) <= split_above or (os.cpu_count() or 1) < 2:
        return _read_part(fstype, proc_fd, firsts, on_found)
    import marshal

    r, w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            children.quiet()
            os.close(r)
            part = _read_part(fstype, proc_fd, firsts[1::2], None)
            data = marshal.dumps(
                [
                    (
                        v.mntns,
                        v.pid,
                        [(m.mount_id, m.parent_id, m.dev, m.root, m.target, m.options, m.submounts) for m in v.mounts],
                    )
                    for v in part.values()
                ]
            )
            while data:
                data = data[os.write(w, data) :]
        finally:
            os._exit(0)
    os.close(w)
    pidfd = children.pidfd(child)
    try:
        found = _read_part(fstype, proc_fd, firsts[0::2], on_found)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(r)
        children.wait(child, pidfd, time.monotonic() + 5.0) or children.kill_and_reap(child, os.dup(pidfd))
        os.close(pidfd)
    for ino, pid, mounts in marshal.loads(b"".join(chunks)) if chunks else []:
        found[ino] = view = NsView(ino, pid, [Mount(*m) for m in mounts])
        if on_found is not None:
            on_found(view)
    return found


def discover(
    fstype: str,
    proc_fd: int,
    first: Iterable[tuple[int, int]],
    host_ns: int,
    everyone: bool = True,
    on_found: Callable[[NsView], None] | None = None,
) -> dict[int, NsView]:
    """The namespaces of `first` ((pid, mntns) of registered containers, read through that pid: its root
    is the one that matters), then, if `everyone`, every other namespace but the host's."""
    first = list(first)
    found = scan(fstype, proc_fd, pids=[pid for pid, _ in first], skip=(host_ns,), on_found=on_found)
    if everyone:
        found.update(scan(fstype, proc_fd, skip={host_ns, *(ns for _, ns in first)}, on_found=on_found))
    return found


def identity(pid: int, proc_fd: int) -> tuple[int | None, int | None]:
    """(start time, mount-namespace inode) of `pid` now; (None, None) if it does not exist."""
    try:
        start = procfs.parse_stat_start_time(read_all(f"{pid}/stat", proc_fd))
        return start, os.stat(f"{pid}/ns/mnt", dir_fd=proc_fd).st_ino
    except OSError:
        return None, None


def _probe_child(proc_fd: int, pid: int, target: str, w: int) -> None:
    try:
        root = os.open(f"{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_fd)
        fd = syscalls.openat2(
            root,
            target.lstrip("/") or ".",
            os.O_PATH | os.O_CLOEXEC,
            syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_SYMLINKS,
        )
        # From here on only the connection can make us wait; say so, and when (the parent may be busy).
        os.write(w, b"S" + int(time.monotonic_ns()).to_bytes(8, "little"))
        os.fstatvfs(fd)
        code = 0
    except OSError as e:
        code = e.errno or 255
    os.write(w, bytes((min(code, 255),)))


class Prober:
    """Is a connection dead? Asked by statfs through a bind of it, from a forked child per device.

    A dead connection answers at once, from the kernel, with ENOTCONN; a live one needs its daemon. A
    child that has reached its statfs (it says so on its pipe) and sleeps in the kernel's FUSE wait
    (/proc/PID/wchan is request_wait_answer) has a daemon on the other end, busy or hung: that is all we
    need to know (not dead), so it is not waited for, and a SIGSTOPped daemon of someone else costs
    nothing. Where wchan is not shown, `grace` seconds after statfs began stand in for it. `timeout`
    bounds the rest (a path that itself crosses a hung daemon). Children start as discovery finds devices
    (`add`, or `watch` as scan's callback), so probing overlaps the scan; `results()` collects, kills and
    reaps them."""

    def __init__(
        self,
        proc_fd: int,
        skip: Iterable[int] = (),
        timeout: float = 1.0,
        grace: float = 0.02,
        only: set[int] | None = None,
    ) -> None:
        self.proc_fd = proc_fd
        self.skip = set(skip)
        self.only = only  # probe only these devices (None: any)
        self.timeout = timeout
        self.grace = grace
        self.samples: dict[int, tuple[int, str]] = {}
        self._children: dict[int, tuple[int, int]] = {}  # read fd -> (dev, child pid)
        self._pidfds: dict[int, int] = {}  # read fd -> the child's pidfd
        self.left_behind: dict[int, int] = {}  # device -> its probe child, stuck in the kernel
        self._began: dict[int, float] = {}  # read fd -> when the child began (or reached statfs)
        self._at_statfs: set[int] = set()
        self._out: dict[int, str] = {}

    def watch(self, view: NsView) -> None:
        for m in top_mounts(view.mounts).values():
            self.add(m.dev, view.pid, m.target)

    def add(self, dev: int, pid: int, target: str) -> None:
        if dev in self.skip or dev in self.samples or (self.only is not None and dev not in self.only):
            return
        self.samples[dev] = (pid, target)
        r, w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                children.quiet()
                os.close(r)
                _probe_child(self.proc_fd, pid, target, w)
            finally:
                os._exit(0)
        os.close(w)
        self._pidfds[r] = children.pidfd(child)
        self._children[r] = (dev, child)
        self._began[r] = time.monotonic()

    def _held_by_daemon(self, r: int, now: float) -> bool:
        """The child is in its statfs and the request sits with a daemon (see the class doc): it sleeps
        inside fstatfs (/proc/PID/syscall names the call it is blocked in; a dead connection answers
        without sleeping). Only where neither that nor wchan can be read do `grace` seconds stand in for
        it: a child merely waiting for a CPU on a loaded host is not asleep, and must not be taken for
        one held by a daemon (its dead connection would then be left unrepaired)."""
        if r not in self._at_statfs:
            return False
        pid = self._children[r][1]
        try:
            wchan = read_all(f"{pid}/wchan", self.proc_fd)
        except OSError:
            wchan = b""
        if wchan == b"request_wait_answer":
            return True
        try:
            call = read_all(f"{pid}/syscall", self.proc_fd).split(b" ", 1)[0]
        except OSError:
            call = b""
        if call and _FSTATFS is not None:
            return call == _FSTATFS
        return wchan in (b"", b"0") and now > self._began[r] + self.grace

    def results(self) -> dict[int, str]:
        """Per device: DEAD, LIVE, HUNG (a daemon holds the request) or "error:<errno>" (the sample path
        could not be reached), or HUNG after `timeout` without reaching statfs."""
        poller = select.poll()
        for r in self._children:
            poller.register(r, select.POLLIN | select.POLLHUP)
        pending = set(self._children)
        while pending:
            for r, _ in poller.poll(1):  # 1 ms steps: a child in statfs is looked at again
                data = os.read(r, 10)
                if data[:1] == b"S":  # reached statfs at that time
                    self._began[r] = int.from_bytes(data[1:9], "little") / 1e9
                    self._at_statfs.add(r)
                    data = data[9:]
                    if not data:
                        continue
                code = data[0] if data else 255
                self._out[self._children[r][0]] = (
                    LIVE if code == 0 else DEAD if code in DEAD_ERRNOS else f"error:{code}"
                )
                poller.unregister(r)
                pending.discard(r)
            now = time.monotonic()
            pending -= {r for r in pending if self._held_by_daemon(r, now) or now > self._began[r] + self.timeout}
        for r, (dev, child) in self._children.items():
            os.close(r)
            pidfd = self._pidfds.pop(r)
            if dev not in self._out:
                self._out[dev] = HUNG
            elif children.wait(child, pidfd, time.monotonic() + 1.0):
                os.close(pidfd)
                continue
            # A child that read a daemon's never-answered request sleeps uninterruptibly: left behind.
            if not children.kill_and_reap(child, pidfd, grace=0.2):
                self.left_behind[dev] = child
        self._children.clear()
        return self._out


def probe(
    samples: dict[int, tuple[int, str]], proc_fd: int, timeout: float = 1.0, grace: float = 0.02
) -> dict[int, str]:
    """Probe each device of `samples` ({dev: (pid, target)}) at once; see Prober."""
    prober = Prober(proc_fd, timeout=timeout, grace=grace)
    for dev, (pid, target) in samples.items():
        prober.add(dev, pid, target)
    return prober.results()


def answers(path_fd: int, timeout: float) -> str:
    """Does the daemon behind the mount `path_fd` (an O_PATH fd on it) answer a statfs within `timeout`
    seconds? LIVE, DEAD, HUNG or "error:<errno>". Asked from a forked child: a SIGSTOPped or wedged daemon
    never answers, and a child stuck on it is killed or, if it cannot die, left behind (see children)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            children.quiet()
            os.close(r)
            try:
                os.fstatvfs(path_fd)
                code = 0
            except OSError as e:
                code = e.errno or 255
            os.write(w, bytes((min(code, 255),)))
        finally:
            os._exit(0)
    os.close(w)
    pidfd = children.pidfd(child)
    try:
        ready = select.select([r], [], [], timeout)[0]
        data = os.read(r, 1) if ready else b""
    finally:
        os.close(r)
    if not data:
        children.kill_and_reap(child, pidfd, grace=0.2)
        return HUNG
    if not children.wait(child, pidfd, time.monotonic() + 1.0):
        children.kill_and_reap(child, os.dup(pidfd), grace=0.2)
    os.close(pidfd)
    code = data[0]
    return LIVE if code == 0 else DEAD if code in DEAD_ERRNOS else f"error:{code}"
