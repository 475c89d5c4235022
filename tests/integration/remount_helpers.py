"""Shared pieces of the remount integration tests: a restartable daemon per test, the CLI, mount counts."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator

from lxcfs_guard.testing.cgroups import TestCgroup
from lxcfs_guard.testing.containers import LightContainer
from lxcfs_guard.testing.daemon import LXCFS_GUARD
from lxcfs_guard.testing.procs import wait_for
from lxcfs_guard.testing.restartable import Restartable


@contextlib.contextmanager
def daemon(lxcfs: bool = False, parent: str | None = None) -> Iterator[Restartable]:
    """A daemon on a fresh mountpoint (under `parent`, if given) with a fresh state dir (both removed
    afterwards)."""
    mountpoint = tempfile.mkdtemp(prefix="lxcfs-guard-rm-mnt-", dir=parent)
    state_dir = tempfile.mkdtemp(prefix="lxcfs-guard-rm-state-")
    d = Restartable(mountpoint, state_dir, lxcfs=lxcfs)
    try:
        with d:
            yield d
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(mountpoint)


def cli(d: Restartable, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`lxcfs-guard ARGS --mountpoint M --state-dir S --fstype T` (text output captured)."""
    cmd = [LXCFS_GUARD, *args, "--mountpoint", d.mountpoint, "--state-dir", d.state_dir, "--fstype", d.fstype]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def remount_json(d: Restartable, *args: str) -> tuple[int, dict]:
    proc = cli(d, "remount", "--json", *args)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"remount printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None


def actions(report: dict, pids: set[int] | None = None) -> dict[int, str]:
    """pid -> action of the report's namespaces (only `pids`, if given: another test run's containers may
    show up in a full scan of the host)."""
    return {ns["pid"]: ns["action"] for ns in report["namespaces"] if pids is None or ns["pid"] in pids}


def our_mounts(c: LightContainer, fstype: str) -> list[tuple[str, str, str]]:
    """(target, device, per-mount options) of every mount of `fstype` in the container, sorted."""
    out = []
    for line in c.mounts_of(fstype):
        f = line.split()
        out.append((f[4], f[2], f[5]))
    return sorted(out)


def assert_exit_code(rc: int, report: dict, pids: set[int]) -> None:
    """The exit code is 0 exactly when nothing is left broken. A full scan of this shared host may meet
    another test run's broken containers (theirs to fix, and possibly refused): then 1 is right too, but
    never because of ours."""
    ours_ok = all(
        ns["action"] in ("repaired", "already_live", "gone") for ns in report["namespaces"] if ns["pid"] in pids
    )
    others_ok = (
        all(
            ns["action"] in ("repaired", "already_live", "gone") for ns in report["namespaces"] if ns["pid"] not in pids
        )
        and report["error"] is None
    )
    assert ours_ok, report
    assert rc == (0 if others_ok else 1) and report["ok"] == others_ok, report


@contextlib.contextmanager
def pivot_container(cgroup: TestCgroup, limit: int, binds: list[tuple[str, str]]) -> Iterator[LightContainer]:
    """A container made as runtimes make them: `unshare -m`, its root a temp dir bound onto itself, then
    pivot_root into it (the host's tree is gone from its namespace). `binds` are (host source, target
    inside) made before the pivot: directories or files of a FUSE mount. Its init is busybox sleep; ended
    by pid, root removed."""
    root = tempfile.mkdtemp(prefix="lgp-")
    for d in ("proc", "sys", "bin", "oldroot", "tmp"):
        os.mkdir(f"{root}/{d}")
    open(f"{root}/bin/busybox", "w").close()
    lines = [
        "set -e",
        "mount --make-rprivate /",
        f"mount --bind {root} {root}",
        f"mount --bind /proc {root}/proc",
        f"mount --bind /sys {root}/sys",
        f"mount --bind /bin/busybox {root}/bin/busybox",
    ]
    for source, target in binds:
        path = root + target
        if os.path.isdir(source):
            os.makedirs(path, exist_ok=True)
        elif not target.startswith("/proc/") and not target.startswith("/sys/"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
        lines.append(f"mount --bind {shlex.quote(source)} {shlex.quote(path)}")
    lines += [
        f"cd {root}",
        "pivot_root . oldroot",
        "/bin/busybox umount -l /oldroot",
        "exec /bin/busybox sleep 1000000",
    ]
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", "\n".join(lines)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    c = LightContainer(proc.pid, root, cgroup, limit)

    def ready() -> bool:
        assert proc.poll() is None, f"the pivot container's init exited with {proc.returncode}"
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:2] == [b"/bin/busybox", b"sleep"]

    try:
        wait_for(ready, timeout=10, what="pivot container")
        yield c
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def plain_namespaces(n: int, cgroup: TestCgroup, limit: int) -> Iterator[list[LightContainer]]:
    """`n` processes in namespaces copied from ours by a plain `unshare -m` (no pivot_root, no chroot:
    as sandboxes and systemd services with PrivateMounts are): each holds a copy of every mount the host
    had then, ours included. Ended by pid."""
    procs = [
        subprocess.Popen(["unshare", "-m", "--propagation", "private", "/bin/busybox", "sleep", "1000000"])
        for _ in range(n)
    ]
    try:
        host = os.stat("/proc/self/ns/mnt").st_ino
        wait_for(
            lambda: all(
                os.readlink(f"/proc/{p.pid}/exe").endswith("busybox")
                and os.stat(f"/proc/{p.pid}/ns/mnt").st_ino != host
                for p in procs
            ),
            timeout=10,
            what="plain namespaces",
        )
        yield [LightContainer(p.pid, "/", cgroup, limit) for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait()
