"""`lxcfs-guard supervise` where a real client needs it: on a given mountpoint (the global /var/lib/lxcfs
that LXC's hook hard-codes, under its flock), optionally inside its own mount namespace prepared by a shell
snippet (the DaemonSet's shape). Stopped by pid with everything under it; its mounts and dirs removed."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lxcfs_guard.config import FSTYPE
from lxcfs_guard.kernel.procfs import MountInfo, parse_mountinfo
from lxcfs_guard.testing.procs import stop, wait_for

BINARY = str(Path(sys.executable).with_name("lxcfs-guard"))


def read_mountinfo(pid: int | str = "self") -> list[MountInfo]:
    """The mount table, whatever bytes other tests' mounts have in their paths (a clean-up that raised on
    a non-UTF-8 mountpoint elsewhere on the host would leave our mounts behind)."""
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        return parse_mountinfo(f.read().decode(errors="surrogateescape"))


@dataclass
class RunningGuard:
    proc: subprocess.Popen
    mountpoint: str
    state_dir: str
    top: str
    log_path: str

    def daemon_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError), open(os.path.join(self.state_dir, "status.json")) as f:
            return json.load(f).get("daemon_pid")
        return None

    def cli(self, *argv: str, in_guard_ns: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        """A CLI command as an operator runs it (in the guard's mount namespace: `kubectl exec`)."""
        env = {**os.environ, "LXCFS_GUARD_MOUNTPOINT": self.mountpoint, "LXCFS_GUARD_STATE_DIR": self.state_dir}
        pre = ["nsenter", "-t", str(self.proc.pid), "-m"] if in_guard_ns else []
        return subprocess.run([*pre, BINARY, *argv], capture_output=True, text=True, timeout=timeout, env=env)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]


def force_unmount(path: str) -> None:
    """Detach every mount stacked on `path` (lazily: a dead FUSE connection must not block it)."""
    for _ in range(10):
        if not any(m.mount_point == path for m in read_mountinfo()):
            return
        subprocess.run(["umount", "-l", path], check=False, capture_output=True)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
    return out


def _unmount_under(top: str) -> None:
    for _ in range(10):
        mine = [m for m in read_mountinfo() if m.mount_point == top or m.mount_point.startswith(top + "/")]
        if not mine:
            return
        for m in sorted(mine, key=lambda m: -len(m.mount_point)):
            force_unmount(m.mount_point)


@contextlib.contextmanager
def guard(
    mountpoint: str | None = None, prepare: str | None = None, ready_at: str | None = None, extra: tuple[str, ...] = ()
) -> Iterator[RunningGuard]:
    """supervise on `mountpoint` (default: a private tempdir). With `prepare` (a shell snippet; $TOP is the
    guard's tempdir, $MP the mountpoint, $STATE the state dir) it runs in a new mount namespace with the
    host's propagation unchanged, after the snippet. Ready once status.json names a daemon and a mount of
    ours is at `ready_at` in the host's namespace (default: the mountpoint)."""
    top = tempfile.mkdtemp(prefix="lxcfs-guard-client-")
    mp = mountpoint or os.path.join(top, "mnt")
    state = os.path.join(top, "state")
    os.makedirs(mp, exist_ok=True), os.makedirs(state)
    log_path = os.path.join(top, "supervise.log")
    cmd = [BINARY, "supervise", "--mountpoint", mp, "--state-dir", state, *extra]
    if prepare is not None:
        cmd = ["unshare", "-m", "--propagation", "unchanged", "sh", "-c", f"{prepare}\nexec {shlex.join(cmd)}"]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update(TOP=top, MP=mp, STATE=state)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
    g = RunningGuard(proc, mp, state, top, log_path)
    where = ready_at or mp
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"supervise exited {proc.returncode}:\n{g.log()}")
            return g.daemon_pid() is not None and any(
                m.mount_point == where and m.fstype == FSTYPE for m in read_mountinfo()
            )

        wait_for(ready, 30, 0.05, f"a live mount of ours on {where}")
        yield g
    finally:
        tree = descendants(proc.pid)
        stop(proc)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if mountpoint is not None and not mountpoint.startswith(top + "/"):
            for _ in range(4):
                if not any(m.mount_point == mountpoint and m.fstype == FSTYPE for m in read_mountinfo()):
                    break
                force_unmount(mountpoint)
        _unmount_under(top)
        if not any(m.mount_point.startswith(top) for m in read_mountinfo()):
            shutil.rmtree(top, ignore_errors=True)


OK_ACTIONS = ("repaired", "already_live", "gone")


def mntns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def check_remount_all(g: RunningGuard, ours: set[int], in_guard_ns: bool = False) -> dict:
    """`remount --all --json` as an operator runs it. Every namespace of ours (mount-namespace inodes) must
    be repaired or already live. The exit code must be 0 unless what is reported broken lies entirely in
    namespaces that are not ours: other tests on this shared machine leave dead mounts of our type behind,
    and `--all` means the whole host."""
    r = g.cli("remount", "--all", "--json", in_guard_ns=in_guard_ns)
    doc = json.loads(r.stdout)
    mine = [n for n in doc["namespaces"] if n["mntns"] in ours]
    assert all(n["action"] in OK_ACTIONS for n in mine), json.dumps(mine, indent=1)
    foreign_broken = [n for n in doc["namespaces"] if n["mntns"] not in ours and n["action"] not in OK_ACTIONS]
    if not foreign_broken:
        assert r.returncode == 0, r.stdout + r.stderr
    return doc


def diagnose(g: RunningGuard, probe, in_guard_ns: bool = False) -> str:
    """For a failure message: what a manual `remount --all` says and what the reader sees after it (tells
    a repair the supervisor missed from one that cannot be done)."""
    r = g.cli("remount", "--all", in_guard_ns=in_guard_ns)
    return f"\n--- remount --all (exit {r.returncode}):\n{r.stdout[-2500:]}{r.stderr[-1000:]}\n--- then: {probe()!r}"
