"""A live daemon for tests: `with serve() as d:` starts `.venv/bin/lxcfs-guard serve` on a fresh temp
mountpoint, waits until the mount answers, and on exit stops it by pid and force-unmounts, even when the
test failed. `with lxcfs_reference() as mnt:` does the same for Debian's LXCFS 5.0.3, the reference."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from lxcfs_guard.kernel.procfs import mounts_at
from lxcfs_guard.testing.procs import force_unmount, is_mounted, stop, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LXCFS_GUARD = os.path.join(REPO, ".venv", "bin", "lxcfs-guard")
LXCFS = "/usr/bin/lxcfs"


@dataclass
class Daemon:
    proc: subprocess.Popen
    mountpoint: str
    state_dir: str
    log_path: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def path(self, rel: str) -> str:
        return os.path.join(self.mountpoint, rel)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def _mount_fstype(path: str) -> str | None:
    mounts = mounts_at(path)
    return mounts[-1].fstype if mounts else None  # the last one stacked wins


def _answers(path: str, timeout: float = 2.0) -> bool:
    """Read `path` from a child with its own timeout: a wedged FUSE read must not hang the test."""
    try:
        r = subprocess.run(["cat", path], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and len(r.stdout) > 0


@contextlib.contextmanager
def serve(
    mountpoint: str | None = None,
    state_dir: str | None = None,
    args: tuple[str, ...] | list[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> Iterator[Daemon]:
    """Run `lxcfs-guard serve --mountpoint DIR --state-dir DIR2 *args` until the block ends.

    Ready means: the state file {state_dir}/serve/<pid>.json exists (the daemon writes it only after its
    own read through the mount answered), mountinfo shows fuse.lxcfs-guard there, and a read from a child
    process returns data. Temp dirs it created are removed afterwards."""
    made: list[str] = []
    if mountpoint is None:
        mountpoint = tempfile.mkdtemp(prefix="lxcfs-guard-mnt-")
        made.append(mountpoint)
    if state_dir is None:
        state_dir = tempfile.mkdtemp(prefix="lxcfs-guard-state-")
        made.append(state_dir)
    log_fd, log_path = tempfile.mkstemp(prefix="lxcfs-guard-serve-", suffix=".log")
    cmd = [LXCFS_GUARD, "serve", "--mountpoint", mountpoint, "--state-dir", state_dir, *args]
    full_env = dict(os.environ)
    full_env.pop("NOTIFY_SOCKET", None)
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, stdout=log_fd, stderr=log_fd, env=full_env, start_new_session=True)
    os.close(log_fd)
    d = Daemon(proc=proc, mountpoint=mountpoint, state_dir=state_dir, log_path=log_path)
    try:
        state_file = os.path.join(state_dir, "serve", f"{proc.pid}.json")

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}:\n{d.log()}")
            return os.path.exists(state_file)

        wait_for(ready, timeout, 0.02, "lxcfs-guard serve to write its state file")
        assert _mount_fstype(mountpoint) == "fuse.lxcfs-guard", d.log()
        assert _answers(os.path.join(mountpoint, "proc", "meminfo")), d.log()
        yield d
    finally:
        stop(proc)
        force_unmount(mountpoint)
        with contextlib.suppress(OSError):
            os.unlink(log_path)
        for path in made:
            if not is_mounted(path):
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def lxcfs_reference(
    mountpoint: str | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 20.0,
    binary: str = LXCFS,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Debian's LXCFS 5.0.3 (or another LXCFS `binary`, e.g. a 7.0.0 build) on its own temp dir, killed by
    pid and unmounted afterwards."""
    made = mountpoint is None
    if mountpoint is None:
        mountpoint = tempfile.mkdtemp(prefix="lxcfs-ref-")
    # --pidfile keeps it off /run/lxcfs.pid, which a host's own lxcfs may hold
    pidfile = os.path.join(tempfile.gettempdir(), f"lxcfs-ref-{os.getpid()}-{time.monotonic_ns()}.pid")
    proc = subprocess.Popen(
        [binary, "--pidfile", pidfile, *args, mountpoint],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{binary} exited with {proc.returncode}")
            return _mount_fstype(mountpoint) == "fuse.lxcfs" and _answers(os.path.join(mountpoint, "proc", "meminfo"))

        wait_for(ready, timeout, 0.05, "lxcfs to mount")
        yield mountpoint
    finally:
        stop(proc)
        force_unmount(mountpoint)
        with contextlib.suppress(OSError):
            os.unlink(pidfile)
        if made and not is_mounted(mountpoint):
            shutil.rmtree(mountpoint, ignore_errors=True)


if __name__ == "__main__":  # smoke: python -m lxcfs_guard.testing.daemon
    with serve() as d, lxcfs_reference() as ref:
        print(d.pid, d.mountpoint, ref, file=sys.stderr)
        with open(d.path("proc/meminfo")) as f:
            print(f.read()[:200])
        with open(os.path.join(d.state_dir, "serve", f"{d.pid}.json")) as f:
            print(json.load(f))
