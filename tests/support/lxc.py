"""Real LXC containers for tests (Debian's `lxc` 5.0 and its LXCFS mount hook), and the lock every test
that uses the one global /var/lib/lxcfs holds (LXC's hook hard-codes that path).

A container lives under its own tempdir lxcpath (-P), has no network, is created from the busybox template
and is stopped, destroyed and its cgroups removed afterwards, even when the test failed."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from lxcfs_guard.testing.procs import wait_for

VARLIB = "/var/lib/lxcfs"
VARLIB_LOCK = "/run/lxcfs-guard-varlib.lock"
LXCFS_INCLUDE = "/usr/share/lxc/config/common.conf.d/00-lxcfs.conf"
IDMAP_BASE = 100000


@contextlib.contextmanager
def varlib_lock(timeout: float = 600.0) -> Iterator[None]:
    """Exclusive flock on /run/lxcfs-guard-varlib.lock for the whole test (other helpers' tests use it too)."""
    fd = os.open(VARLIB_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{VARLIB_LOCK} held by someone else for {timeout:.0f} s") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def lxc_available() -> bool:
    return (
        shutil.which("lxc-start") is not None
        and os.path.exists("/usr/share/lxc/templates/lxc-busybox")
        and os.path.exists("/usr/share/lxcfs/lxc.mount.hook")
        and shutil.which("busybox") is not None
    )


@dataclass
class LxcContainer:
    lxcpath: str
    name: str
    log_path: str

    def pid(self) -> int:
        r = subprocess.run(
            ["lxc-info", "-P", self.lxcpath, "-n", self.name, "-pH"], capture_output=True, text=True, timeout=10
        )
        return int(r.stdout.strip())

    def sh(self, script: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["lxc-attach", "-P", self.lxcpath, "-n", self.name, "--clear-env", "--", "/bin/sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]
        return ""


def _cgroup_dirs(name: str) -> list[str]:
    out = []
    for ctrl in os.listdir("/sys/fs/cgroup"):
        for rel in (f"lxc.payload.{name}", f"lxc.monitor.{name}", "lxc.pivot"):
            path = f"/sys/fs/cgroup/{ctrl}/{rel}"
            if os.path.isdir(path):
                out.append(path)
    return out


def _rmdir_tree(path: str) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _rmdir_tree(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(path)


@contextlib.contextmanager
def lxc_container(
    memory: str = "64M", cpus: str = "0", unprivileged: bool = False, nesting_dir: bool = True
) -> Iterator[LxcContainer]:
    """A running busybox container with Debian's LXCFS hook (via 00-lxcfs.conf), `memory`/`cpus` limits,
    and (nesting_dir) an empty /var/lib/lxcfs so the hook binds the whole mount into it."""
    top = tempfile.mkdtemp(prefix="lxcfs-guard-lxc-")
    os.chmod(top, 0o755)  # an unprivileged container's root (uid 100000) must reach its rootfs
    name = f"lg{uuid.uuid4().hex[:8]}"
    log_path = os.path.join(top, "lxc.log")
    conf = os.path.join(top, "base.conf")
    lines = [
        "lxc.net.0.type = empty",
        "lxc.apparmor.profile = unconfined",
        f"lxc.include = {LXCFS_INCLUDE}",
        f"lxc.cgroup.memory.limit_in_bytes = {memory}",
        f"lxc.cgroup.cpuset.cpus = {cpus}",
    ]
    if unprivileged:
        lines += [f"lxc.idmap = u 0 {IDMAP_BASE} 65536", f"lxc.idmap = g 0 {IDMAP_BASE} 65536"]
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    pivot_existed = os.path.isdir("/sys/fs/cgroup/memory/lxc.pivot")
    c = LxcContainer(top, name, log_path)
    try:
        r = subprocess.run(
            ["lxc-create", "-P", top, "-n", name, "-t", "busybox", "-f", conf],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        rootfs = os.path.join(top, name, "rootfs")
        if nesting_dir:
            os.makedirs(os.path.join(rootfs, "var/lib/lxcfs"), exist_ok=True)
        if unprivileged:
            subprocess.run(["chown", "-R", "-h", f"{IDMAP_BASE}:{IDMAP_BASE}", rootfs], check=True, timeout=60)
        r = subprocess.run(
            ["lxc-start", "-P", top, "-n", name, "-d", "-l", "INFO", "-o", log_path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr + c.log()
        wait_for(lambda: c.sh("true").returncode == 0, 20, 0.1, "the LXC container to run")
        yield c
    finally:
        subprocess.run(["lxc-stop", "-P", top, "-n", name, "-k"], capture_output=True, timeout=60)
        subprocess.run(["lxc-destroy", "-P", top, "-n", name, "-f"], capture_output=True, timeout=60)
        for path in _cgroup_dirs(name):
            if path.endswith("/lxc.pivot") and pivot_existed:
                continue
            _rmdir_tree(path)
        shutil.rmtree(top, ignore_errors=True)
