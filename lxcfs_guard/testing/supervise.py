"""A real `lxcfs-guard supervise` for the tests, bench/recovery.py and `make demo`: started on a fresh
mountpoint (or a given one) and state dir, with every knob the caller turns; stopped by pid with everything
under it, unmounted and removed afterwards, even when the caller failed (a killed supervisor leaves its serve
instances running: they are found through the status file and the process tree and killed by pid).
`s.hooks()` gives a config.json `hooks` object running this installation's `lxcfs-guard oci-hook` against it,
built from the shipped deploy/runc/config-snippet.json. A real client's shapes are here too: the global
/var/lib/lxcfs as mountpoint (LXC's hook hard-codes it) and supervise in its own mount namespace prepared by
a shell snippet (the DaemonSet's), with `cli(..., in_guard_ns=True)` run there as `kubectl exec` would."""

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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxcfs_guard.config import FSTYPE
from lxcfs_guard.kernel import syscalls
from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.oci.runc import guard_hooks
from lxcfs_guard.testing.procs import force_unmount, signal_daemon, stop, wait_for
from lxcfs_guard.watchdog import fusectl

REPO = Path(__file__).resolve().parents[2]
BINARY = os.path.join(os.path.dirname(sys.executable), "lxcfs-guard")
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")  # a test run under systemd must not notify it


@dataclass
class Supervised:
    top: str
    mountpoint: str
    state_dir: str
    args: list[str]
    env: dict[str, str]
    prepare: str | None = None
    ready_at: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_paths: list[str] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)

    def start(self) -> None:
        log_path = os.path.join(self.top, f"supervise-{len(self.log_paths)}.log")
        self.log_paths.append(log_path)
        cmd = [BINARY, "supervise", "--mountpoint", self.mountpoint, "--state-dir", self.state_dir, *self.args]
        if self.prepare is not None:  # exec keeps the pid: proc.pid is supervise's, in the new namespace
            cmd = ["unshare", "-m", "--propagation", "unchanged", "sh", "-c", f"{self.prepare}\nexec {shlex.join(cmd)}"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.seen_pids.add(self.proc.pid)

    def status(self) -> dict[str, Any]:
        """The watchdog's status file, {} while there is none (or it is being replaced)."""
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(self.state_dir, "status.json")) as f:
                st = json.load(f)
            for inst in st.get("instances", []):
                self.seen_pids.add(int(inst["pid"]))
            return st if isinstance(st, dict) else {}
        return {}

    def daemon_pid(self) -> int | None:
        """The `serve` process serving now, as the status file names it (there may be a standby too)."""
        pid = self.status().get("daemon_pid")
        return pid if isinstance(pid, int) else None

    def wait_healthy(self, timeout: float = 30.0, standby: bool = False, not_pid: int | None = None) -> dict[str, Any]:
        st: dict[str, Any] = {}
        proc = self.proc
        assert proc is not None, "start() first"

        def ok() -> bool:
            nonlocal st
            if proc.poll() is not None:
                raise RuntimeError(f"supervise exited {proc.returncode}:\n{self.log()}")
            st = self.status()
            return (
                bool(st.get("healthy"))
                and st.get("supervisor_pid") == proc.pid
                and st.get("daemon_pid") not in (None, not_pid)
                and (not standby or st.get("standby_pid") is not None)
            )

        wait_for(ok, timeout, 0.01, "supervise to report a healthy daemon")
        if self.ready_at is not None:  # healthy in its own namespace; the host sees it only once propagated
            where = self.ready_at
            wait_for(
                lambda: any(m.mount_point == where and m.fstype == self.fstype() for m in read_mountinfo()),
                timeout,
                0.01,
                f"a live mount of ours on {where}",
            )
        return st

    def fstype(self) -> str:
        """The fstype supervise guards: ours unless `--fstype` says otherwise (stock LXCFS under --exec)."""
        if "--fstype" in self.args[:-1]:
            return self.args[self.args.index("--fstype") + 1]
        return FSTYPE

    def log(self) -> str:
        out = []
        for p in self.log_paths:
            with contextlib.suppress(OSError), open(p, errors="replace") as f:
                out.append(f.read())
        return "\n".join(out)

    def read(self, rel: str = "proc/uptime", timeout: float = 2.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["cat", os.path.join(self.mountpoint, rel)], capture_output=True, timeout=timeout)

    def cli(self, *argv: str, in_guard_ns: bool = False, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`lxcfs-guard ARGV` against this instance (its mountpoint and state dir through the environment),
        in supervise's mount namespace with `in_guard_ns` (as `kubectl exec` into the guard's pod runs it)."""
        env = {**self.env, "LXCFS_GUARD_MOUNTPOINT": self.mountpoint, "LXCFS_GUARD_STATE_DIR": self.state_dir}
        pre = []
        if in_guard_ns:
            assert self.proc is not None, "start() first"
            pre = ["nsenter", "-t", str(self.proc.pid), "-m"]
        return subprocess.run([*pre, BINARY, *argv], capture_output=True, text=True, timeout=timeout, env=env)

    def listed(self) -> dict[str, dict[str, Any]]:
        """`lxcfs-guard list --json`, by container id."""
        p = self.cli("list", "--json")
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        items = doc if isinstance(doc, list) else doc.get("containers", [])
        return {c["id"]: c for c in items if c.get("id")}

    def hooks(self, extra: list[str] | None = None) -> dict[str, Any]:
        snippet = json.loads((REPO / "deploy" / "runc" / "config-snippet.json").read_text())
        hooks: dict[str, Any] = guard_hooks(
            BINARY, ["--mountpoint", self.mountpoint, "--state-dir", self.state_dir, *(extra or [])], snippet
        )
        return hooks

    def cleanup(self) -> None:
        """Stop supervise and every process under it by pid, then unmount: everything under top, and a
        mountpoint outside it (the global /var/lib/lxcfs) only of our fstype (never a mount not ours)."""
        self.status()
        tree: list[int] = []
        if self.proc is not None:
            tree = descendants(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            stop(self.proc, timeout=10)
        for pid in tree:  # whatever supervise started that outlived it (its own session: no group kill)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.seen_pids - set(tree):  # serve instances a killed supervisor left behind
            with contextlib.suppress(OSError, ValueError):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.state_dir.encode() not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
        if not _under(self.mountpoint, self.top):
            for _ in range(4):
                if not any(m.mount_point == self.mountpoint and m.fstype == self.fstype() for m in read_mountinfo()):
                    break
                force_unmount(self.mountpoint)
        for _ in range(10):
            mine = [m for m in read_mountinfo() if _under(m.mount_point, self.top)]
            if not mine:
                shutil.rmtree(self.top, ignore_errors=True)
                break
            for m in sorted(mine, key=lambda m: -len(m.mount_point)):
                force_unmount(m.mount_point)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def descendants(pid: int) -> list[int]:
    """Every process under `pid` now (children of each of its threads, recursively)."""
    out: list[int] = []
    todo = [pid]
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
def supervised(
    *args: str,
    start: bool = True,
    env: dict[str, str] | None = None,
    mountpoint: str | None = None,
    prefix: str = "lxcfs-guard-wd-",
    show_log: bool = True,
    prepare: str | None = None,
    ready_at: str | None = None,
) -> Iterator[Supervised]:
    """`lxcfs-guard supervise ARGS` on a private mountpoint (or `mountpoint`, e.g. /var/lib/lxcfs under its
    flock) and state dir, healthy before the body runs unless start=False; its log is printed when the body
    fails (pytest shows it with the failure) unless show_log=False.
    With `prepare` (a shell snippet; $TOP is the tempdir, $MP the mountpoint, $STATE the state dir)
    supervise runs in a new mount namespace, the host's propagation unchanged, after the snippet; it is then
    ready only once a live mount of ours is also at `ready_at` in the host's namespace (default: the
    mountpoint), which may be given alone too."""
    top = tempfile.mkdtemp(prefix=prefix)
    mp = mountpoint or os.path.join(top, "mnt")
    state = os.path.join(top, "state")
    base = env if env is not None else {k: v for k, v in os.environ.items() if k not in NOTIFY_ENV}
    s = Supervised(
        top=top,
        mountpoint=mp,
        state_dir=state,
        args=list(args),
        env={**base, "TOP": top, "MP": mp, "STATE": state},
        prepare=prepare,
        ready_at=ready_at if ready_at is not None or prepare is None else mp,
    )
    os.makedirs(s.mountpoint, exist_ok=mountpoint is not None)
    os.makedirs(s.state_dir)
    try:
        if start:
            s.start()
            s.wait_healthy()
        yield s
    except BaseException:
        if show_log:
            print(f"--- supervise log ({s.top}) ---\n{s.log()}")
        raise
    finally:
        s.cleanup()


@contextlib.contextmanager
def fusectl_restored() -> Iterator[None]:
    """supervise mounts fusectl to abort a hung connection; take it down again if it was not there before
    (a host without systemd has none, and it should look the same after the tests)."""
    was = fusectl.is_mounted()
    try:
        yield
    finally:
        if not was and fusectl.is_mounted():
            with contextlib.suppress(OSError):
                syscalls.umount2(fusectl.FUSECTL_DIR, syscalls.MNT_DETACH)


def kill_and_time(pid: int, sig: int = signal.SIGKILL) -> int:
    """Send `sig` and return the CLOCK_MONOTONIC time it was sent (the readers' clock). A SIGSTOP (a hang)
    goes to every process of the daemon: its workers serve on while only the holder is stopped."""
    t = time.monotonic_ns()
    if sig == signal.SIGSTOP:
        signal_daemon(pid, sig)
    else:
        os.kill(pid, sig)
    return t
