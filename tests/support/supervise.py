"""A running `lxcfs-guard supervise` for tests: `with supervise() as g:` starts it on a private mountpoint
and state dir, waits until the watchdog reports a serving daemon, and on exit stops the supervisor and every
process under it by pid, unmounts what is left and removes the directories, even when the test failed.
`g.hooks()` gives a config.json `hooks` object running this checkout's `lxcfs-guard oci-hook` against it,
built from the shipped deploy/runc/config-snippet.json."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lxcfs_guard.config import FSTYPE
from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.oci.runc import guard_hooks
from tests.support.procs import force_unmount, stop, wait_for

REPO = Path(__file__).resolve().parents[2]
BINARY = str(Path(sys.executable).with_name("lxcfs-guard"))


@dataclass
class Guard:
    proc: subprocess.Popen
    mountpoint: str
    state_dir: str
    log_path: str

    def status(self) -> dict:
        with open(os.path.join(self.state_dir, "status.json")) as f:
            return json.load(f)

    def daemon_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return self.status().get("daemon_pid")
        return None

    def hooks(self, extra: list[str] | None = None) -> dict:
        snippet = json.loads((REPO / "deploy" / "runc" / "config-snippet.json").read_text())
        return guard_hooks(BINARY, ["--mountpoint", self.mountpoint, "--state-dir", self.state_dir, *(extra or [])],
                           snippet)

    def cli(self, *argv: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "LXCFS_GUARD_MOUNTPOINT": self.mountpoint, "LXCFS_GUARD_STATE_DIR": self.state_dir}
        return subprocess.run([BINARY, *argv], capture_output=True, text=True, timeout=30, env=env)

    def listed(self) -> dict[str, dict]:
        p = self.cli("list", "--json")
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        items = doc if isinstance(doc, list) else doc.get("containers", [])
        return {c["id"]: c for c in items if c.get("id")}

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


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


@contextlib.contextmanager
def supervise(*extra: str) -> Iterator[Guard]:
    """`lxcfs-guard supervise` on a private mountpoint and state dir; stopped by pid, unmounted, removed."""
    top = tempfile.mkdtemp(prefix="lxcfs-guard-ocitest-")
    mnt, state = os.path.join(top, "mnt"), os.path.join(top, "state")
    os.makedirs(mnt), os.makedirs(state)
    log_path = os.path.join(top, "supervise.log")
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([BINARY, "supervise", "--mountpoint", mnt, "--state-dir", state, *extra],
                                stdout=log, stderr=log, env=env, start_new_session=True)
    g = Guard(proc, mnt, state, log_path)
    tree: list[int] = []
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"supervise exited {proc.returncode}:\n{g.log()}")
            return g.daemon_pid() is not None and any(m.mount_point == mnt and m.fstype == FSTYPE
                                                      for m in read_mountinfo())

        wait_for(ready, 30, 0.02, "supervise to be ready")
        yield g
    finally:
        tree = descendants(proc.pid)
        stop(proc)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        force_unmount(mnt)
        for m in read_mountinfo():  # the instances' private mounts, if the supervisor left any
            if m.mount_point.startswith(top + "/"):
                force_unmount(m.mount_point)
        if not any(m.mount_point.startswith(top) for m in read_mountinfo()):
            shutil.rmtree(top, ignore_errors=True)
