"""Light containers for the remount tests and benchmark: real mount namespaces, real memory cgroups, no
image. Each is one forked process that

  1. joins its own cgroup (lxcfs_guard.testing.cgroups.make_cgroup, with its own memory limit),
  2. unshares its mount namespace (private propagation; or slave, for the "tunnel" the old nsenter way
     needs: then only a shared mount on the host, the tunnel, propagates in),
  3. builds its root: a temp dir with proc/ (a bind of the host's /proc, so what lies under a bind is the
     host's real file, as in a real container), sys/ (a bind of /sys, for cpu/online) and bin/busybox,
  4. optionally binds files of a FUSE mount over its proc/ files (the "hand-made" binds discovery must
     find), with the options asked for (ro, ...),
  5. chroots there and execs `busybox sleep` as its init.

The container's root is not its namespace's root (a chroot, as with many hand-made containers; runc's
pivot_root is covered by the runc tests), so the engine must resolve targets through /proc/PID/root.
Everything is undone by pid and path: SIGKILL to the init (its namespace and mounts go with it), the cgroup
removed, the temp dir removed.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.testing.cgroups import TestCgroup, make_cgroup
from lxcfs_guard.testing.procs import wait_for

MiB = 1 << 20
BUSYBOX = "/bin/busybox"
FILES: tuple[str, ...] = (
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/loadavg",
    "proc/meminfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
)


class LightContainer:
    """A running light container: `pid` (its init), `root` (host path of its root dir), `cgroup`, `limit`."""

    def __init__(self, pid: int, root: str, cgroup: TestCgroup, limit: int) -> None:
        self.pid = pid
        self.root = root
        self.cgroup = cgroup
        self.limit = limit

    @property
    def mntns(self) -> int:
        return os.stat(f"/proc/{self.pid}/ns/mnt").st_ino

    def host_path(self, target: str) -> str:
        """`target` (a path inside the container) as seen from its namespace's root (for nsenter -m)."""
        return self.root + "/" + target.lstrip("/")

    def mountinfo(self) -> list[str]:
        with open(f"/proc/{self.pid}/mountinfo", "rb") as f:  # bytes-safe: a mount name may be any bytes
            return f.read().decode(errors="surrogateescape").split("\n")[:-1]

    def mounts_of(self, fstype: str) -> list[str]:
        """mountinfo lines of `fstype` in the container's namespace."""
        return [line for line in self.mountinfo() if f" - {fstype} " in line]

    def read(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """Read `path` as a process of the container (its cgroup, mount namespace and root).
        Returns (0, text) or (errno, "")."""
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - child
            code = 1
            try:
                os.close(r)
                enter(self)
                try:
                    with open(path, "rb") as f:
                        data = b"\0" + f.read()
                except OSError as e:
                    data = bytes((e.errno or 255,))
                while data:
                    data = data[os.write(w, data) :]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        try:
            chunks, deadline = [], time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([r], [], [], left)[0]:
                    os.kill(child, signal.SIGKILL)
                    raise TimeoutError(f"reading {path} in container {self.pid} took more than {timeout}s")
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(r)
            os.waitpid(child, 0)
        data = b"".join(chunks)
        if not data:
            return 255, ""
        return (0, data[1:].decode()) if data[0] == 0 else (data[0], "")

    def call(self, fn: Callable[[], object], chroot: bool = True) -> None:
        """Run `fn` in a forked process inside the container (its cgroup and mount namespace; its root too
        unless chroot=False, when paths are as its namespace's root sees them: see host_path). Raises
        RuntimeError with the child's exception if `fn` raised."""
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - child
            try:
                os.close(r)
                enter(self, chroot=chroot)
                fn()
            except BaseException as e:  # noqa: BLE001 - the forked child reports anything to the parent
                os.write(w, f"{type(e).__name__}: {e}".encode()[:4000])
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            err = f.read()
        os.waitpid(child, 0)
        if err:
            raise RuntimeError(f"in container {self.pid}: {err.decode(errors='replace')}")

    def memtotal_kb(self) -> int:
        """MemTotal of /proc/meminfo as the container reads it; OSError if the read fails."""
        err, text = self.read("/proc/meminfo")
        if err:
            raise OSError(err, os.strerror(err), "/proc/meminfo")
        return memtotal_kb(text)


def memtotal_kb(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise ValueError("no MemTotal line")


def enter(c: LightContainer, chroot: bool = True) -> None:
    """Make the calling (forked, single-threaded) process a process of container `c`."""
    c.cgroup.add(os.getpid())
    nsfd = os.open(f"/proc/{c.pid}/ns/mnt", os.O_RDONLY)
    rootfd = os.open(f"/proc/{c.pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    sc.setns(nsfd, sc.CLONE_NEWNS)
    if chroot:
        os.fchdir(rootfd)
        os.chroot(".")
    os.close(nsfd)
    os.close(rootfd)


def _init_child(root: str, cgroup: TestCgroup, binds: Sequence[tuple[str, str, int]], slave: bool, ready: int) -> None:
    """The container's init, between fork and exec (runs in the child; only syscalls, then exec)."""
    try:
        cgroup.add(os.getpid())
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount("none", "/", None, sc.MS_REC | (sc.MS_SLAVE if slave else sc.MS_PRIVATE))
        sc.mount("/proc", f"{root}/proc", None, sc.MS_BIND)
        sc.mount("/sys", f"{root}/sys", None, sc.MS_BIND)
        sc.mount(BUSYBOX, f"{root}/bin/busybox", None, sc.MS_BIND)
        for source, target, flags in binds:
            sc.mount(source, f"{root}/{target.lstrip('/')}", None, sc.MS_BIND)
            if flags:
                sc.mount("none", f"{root}/{target.lstrip('/')}", None, sc.MS_BIND | sc.MS_REMOUNT | flags)
        os.chroot(root)
        os.chdir("/")
        devnull = os.open("/dev/null", os.O_RDWR) if os.path.exists("/dev/null") else -1
        for fd in (0, 1, 2):
            if devnull >= 0:
                os.dup2(devnull, fd)
        os.closerange(3, 65536)
        os.execv("/bin/busybox", ["busybox", "sleep", "1000000"])
    except BaseException as e:  # noqa: BLE001 - the forked child reports anything to the parent
        with contextlib.suppress(OSError):
            os.write(ready, f"{type(e).__name__}: {e}".encode()[:4000])
    finally:
        os._exit(127)


def start(
    cgroup: TestCgroup,
    limit: int,
    *,
    bind_from: str | None = None,
    files: Sequence[str] = FILES,
    flags: int = 0,
    slave: bool = False,
    parent: str | None = None,
    want_pid: int | None = None,
) -> LightContainer:
    """Start one light container in `cgroup`. With `bind_from` (a FUSE mountpoint), its `files` are bound
    over the container's /proc files (MS_RDONLY etc. in `flags`). `slave`: mounts propagate in from the
    host (for a shared tunnel). The root dir is made under `parent` (default: a temp dir). `want_pid`
    asks the kernel for that pid (ns_last_pid): a test of pid reuse checks `pid` and retries."""
    root = tempfile.mkdtemp(prefix="lgc-", dir=parent)
    for d in ("proc", "sys", "bin", "tmp"):
        os.mkdir(f"{root}/{d}")
    open(f"{root}/bin/busybox", "w").close()
    binds = [(f"{bind_from}/{f}", "/" + f, flags) for f in files] if bind_from else []
    r, w = os.pipe2(os.O_CLOEXEC)  # closed by the exec: EOF = success, data = the error
    if want_pid is not None:  # the next pid the kernel hands out is want_pid, unless someone forks first
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(want_pid - 1))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        _init_child(root, cgroup, binds, slave, w)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        err = pipe.read()
    if err:
        os.waitpid(pid, 0)
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"light container failed to start: {err.decode(errors='replace')}")
    c = LightContainer(pid, root, cgroup, limit)
    wait_for(lambda: os.readlink(f"/proc/{pid}/root") == root, 5, 0.001, "the container's chroot")
    return c


def stop(c: LightContainer) -> None:
    """SIGKILL the init (its mount namespace and every mount in it go with it), reap it, remove its root."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(c.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(c.pid, 0)
    _remove_root(c.root)


def _remove_root(root: str) -> None:
    # The binds lived in the dead namespace only; the host sees a plain directory tree.
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tunnel() -> Iterator[str]:
    """A shared mount on the host (a temp dir bound onto itself, made shared): mounts made under it
    propagate into containers started with slave=True, as the old nsenter way needs, and any mount of
    ours under it is shared, as on a systemd host."""
    top = tempfile.mkdtemp(prefix="lxcfs-guard-tunnel-")
    sc.mount(top, top, None, sc.MS_BIND)
    sc.mount("none", top, None, sc.MS_SHARED)
    try:
        yield top
    finally:
        import subprocess

        subprocess.run(["umount", "-R", "-l", top], check=False, capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def light_containers(
    n: int,
    *,
    memory_mib: Sequence[int] | None = None,
    bind_from: str | None = None,
    files: Sequence[str] = FILES,
    flags: int = 0,
    slave: bool = False,
) -> Iterator[list[LightContainer]]:
    """`n` light containers, container i limited to memory_mib[i] MiB (default 64 + i), each in its own
    cgroup; all stopped and removed afterwards, even on failure."""
    parent = tempfile.mkdtemp(prefix="lxcfs-guard-lc-")
    out: list[LightContainer] = []
    with contextlib.ExitStack() as stack:
        try:
            for i in range(n):
                mib = memory_mib[i] if memory_mib else 64 + i
                cg = stack.enter_context(make_cgroup(memory=mib * MiB))
                out.append(
                    start(cg, mib * MiB, bind_from=bind_from, files=files, flags=flags, slave=slave, parent=parent)
                )
            yield out
        finally:
            for c in out:
                stop(c)
            shutil.rmtree(parent, ignore_errors=True)


class LoopingReader:
    """A process of container `c` that reads `path` in a tight loop (open, read, close) until stopped, and
    records what it saw as runs: [("own", n), ("ENOTCONN", n), ("own", n)]. "own" means MemTotal equals
    the container's limit; anything else is "MemTotal=<kB>" or the errno's name. Stop with `stop()`."""

    def __init__(self, c: LightContainer, path: str = "/proc/meminfo") -> None:
        import errno as _errno
        import json

        self._stop_r, self._stop_w = os.pipe()
        self._out_r, out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            code = 1
            try:
                os.close(self._stop_w)
                os.close(self._out_r)
                enter(c)
                os.set_blocking(self._stop_r, False)
                own = c.limit // 1024
                runs: list[list] = []
                while True:
                    try:
                        with open(path, "rb") as f:
                            kb = memtotal_kb(f.read().decode())
                        kind = "own" if kb == own else f"MemTotal={kb}"
                    except OSError as e:
                        kind = _errno.errorcode.get(e.errno or 0, str(e.errno))
                    except ValueError:
                        kind = "garbled"
                    if runs and runs[-1][0] == kind:
                        runs[-1][1] += 1
                    else:
                        runs.append([kind, 1])
                    try:
                        if os.read(self._stop_r, 1) is not None:
                            break
                    except BlockingIOError:
                        pass
                data = json.dumps(runs).encode()
                while data:
                    data = data[os.write(out_w, data) :]
                code = 0
            finally:
                os._exit(code)
        os.close(self._stop_r)
        os.close(out_w)

    def stop(self) -> list[tuple[str, int]]:
        import json

        os.write(self._stop_w, b"x")
        os.close(self._stop_w)
        with os.fdopen(self._out_r, "rb") as f:
            data = f.read()
        os.waitpid(self.pid, 0)
        return [(k, n) for k, n in json.loads(data)]
