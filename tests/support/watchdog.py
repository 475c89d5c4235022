"""A real `lxcfs-guard supervise` for the watchdog's tests and bench/recovery.py: started on a fresh
mountpoint and state dir, with every knob the tests turn; stopped by pid with everything under it,
unmounted and removed afterwards, even when the test failed (a killed supervisor leaves its serve
instances running: they are found through the status file and the process tree and killed by pid)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from lxcfs_guard.kernel import syscalls
from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.watchdog import fusectl
from tests.support.procs import force_unmount, signal_daemon, stop, wait_for

BINARY = os.path.join(os.path.dirname(sys.executable), "lxcfs-guard")


@dataclass
class Supervised:
    top: str
    mountpoint: str
    state_dir: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log_paths: list[str] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)

    def start(self) -> None:
        log_path = os.path.join(self.top, f"supervise-{len(self.log_paths)}.log")
        self.log_paths.append(log_path)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [BINARY, "supervise", "--mountpoint", self.mountpoint, "--state-dir", self.state_dir, *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )
        self.seen_pids.add(self.proc.pid)

    def status(self) -> dict:
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(self.state_dir, "status.json")) as f:
                st = json.load(f)
            for inst in st.get("instances", []):
                self.seen_pids.add(int(inst["pid"]))
            return st
        return {}

    def wait_healthy(self, timeout: float = 30.0, standby: bool = False, not_pid: int | None = None) -> dict:
        st: dict = {}

        def ok() -> bool:
            nonlocal st
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"supervise exited {self.proc.returncode}:\n{self.log()}")
            st = self.status()
            return (
                bool(st.get("healthy"))
                and st.get("supervisor_pid") == self.proc.pid
                and st.get("daemon_pid") not in (None, not_pid)
                and (not standby or st.get("standby_pid") is not None)
            )

        wait_for(ok, timeout, 0.01, "supervise to report a healthy daemon")
        return st

    def log(self) -> str:
        out = []
        for p in self.log_paths:
            with contextlib.suppress(OSError), open(p, errors="replace") as f:
                out.append(f.read())
        return "\n".join(out)

    def read(self, rel: str = "proc/uptime", timeout: float = 2.0) -> subprocess.CompletedProcess:
        return subprocess.run(["cat", os.path.join(self.mountpoint, rel)], capture_output=True, timeout=timeout)

    def cleanup(self) -> None:
        self.status()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            stop(self.proc, timeout=10)
        for pid in self.seen_pids:  # serve instances a killed supervisor left behind
            with contextlib.suppress(OSError, ValueError):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.state_dir.encode() not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
        for m in sorted(read_mountinfo(), key=lambda m: -len(m.mount_point)):
            if m.mount_point.startswith(self.top + "/"):
                force_unmount(m.mount_point)
        if not any(m.mount_point.startswith(self.top + "/") for m in read_mountinfo()):
            shutil.rmtree(self.top, ignore_errors=True)


@contextlib.contextmanager
def supervised(*args: str, start: bool = True, env: dict[str, str] | None = None) -> Iterator[Supervised]:
    top = tempfile.mkdtemp(prefix="lxcfs-guard-wd-")
    s = Supervised(
        top=top,
        mountpoint=os.path.join(top, "mnt"),
        state_dir=os.path.join(top, "state"),
        args=list(args),
        env=env or {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")},
    )
    try:
        if start:
            s.start()
            s.wait_healthy()
        yield s
    except BaseException:
        print(f"--- supervise log ({s.top}) ---\n{s.log()}")  # pytest shows it with the failure
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
