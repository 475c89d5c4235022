"""One running FUSE daemon (`serve`, or the command given with --exec) on its own private mountpoint.

Every instance mounts on `{state_dir}/instances/<token>/mnt`, never on the host mountpoint itself; the
host mountpoint only ever holds a *clone* of the current instance's mount (see `supervise.publish`).
That is what makes the hot standby and the zero-downtime restart possible (two daemons mounted at once),
and it keeps a daemon's own clean-up (libfuse unmounts its mountpoint on exit) from ever removing the
mount the host and new containers use.

An instance is either our child (started here; a `Popen`) or adopted (found running by a new supervisor
after the previous one died; not our child). Both are watched through a pidfd, which becomes readable
the moment the process exits; nothing here polls or sleeps.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from lxcfs_guard.kernel import procfs, syscalls

INSTANCES = "instances"
# Environment a service manager gives *us*; a child must not see it (it would notify systemd directly,
# or believe systemd's watchdog is meant for it).
_MANAGER_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


class Role(enum.StrEnum):
    """What an instance is to the supervisor. A StrEnum: the value is what the status file records (and
    what a later supervisor reads back to adopt it)."""

    PRIMARY = "primary"  # serving: the host mountpoint and every container are on its mount
    STANDBY = "standby"  # started and answering on its private mount, to take over at once after a crash
    NEXT = "next"  # starting to become primary (first start, restart after a crash, a reload's replacement)
    OLD = "old"  # the previous primary (or standby) after a reload: serves in-flight reads, then is stopped
    LEFT = "left"  # an instance directory found at start that the status file does not name (a supervisor
    #                killed between starting a daemon and recording it): its daemon is killed, its mount is
    #                treated as one of our dead connections, its directory removed once containers moved off


@dataclass
class Instance:
    role: Role
    pid: int
    start_time: int  # /proc/PID/stat start time: a pid names this instance only while it matches
    dir: str
    fstype: str
    proc: subprocess.Popen | None = None  # None when adopted
    pidfd: int = -1
    notify: socket.socket | None = None  # receives the child's sd_notify READY=1
    dev: int | None = None  # st_dev of the mount once it is there
    ready: bool = False
    launched: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    exit_status: int | None = None
    retire_at: float | None = None  # for role "old": when to send SIGTERM
    kill_at: float | None = None  # for role "old": when to give up waiting and SIGKILL
    probe: Any = None  # the Probe in flight for this instance, if any
    probe_after: float = 0.0  # while starting: do not probe again before this (after a failed probe)

    @property
    def mnt(self) -> str:
        return os.path.join(self.dir, "mnt")

    @property
    def dev_str(self) -> str | None:
        return f"{os.major(self.dev)}:{os.minor(self.dev)}" if self.dev is not None else None

    def fileno(self) -> int:
        return self.pidfd

    def alive(self) -> bool:
        return self.pidfd >= 0 and self.exit_status is None

    def find_mount(self) -> int | None:
        """The dev of our FUSE mount at `mnt`, from mountinfo (never stat a FUSE path from the
        supervisor: a stat on a hung daemon would hang us)."""
        for m in procfs.read_mountinfo("self"):
            if m.mount_point == self.mnt and m.fstype == self.fstype:
                return m.dev
        return None

    def reap(self) -> bool:
        """Called when the pidfd is readable: True if the process has exited (reaped if our child)."""
        if self.exit_status is not None:
            return True
        if self.proc is not None:
            status = self.proc.poll()
            if status is None:
                return False
            self.exit_status = status
        else:  # adopted, not our child: its pidfd turns readable when it exits; its parent reaps it
            if self.pidfd >= 0 and not select.select([self.pidfd], [], [], 0)[0]:
                return False
            self.exit_status = -1  # unknown: only its parent learns it
        _close_fd(self)
        return True

    def drain_notify(self) -> bool:
        """Read queued sd_notify datagrams; True if one said READY=1."""
        ready = False
        while self.notify is not None:
            try:
                data = self.notify.recv(4096)
            except BlockingIOError:
                break
            if b"READY=1" in data.split(b"\n"):
                ready = True
        return ready

    def send(self, sig: int) -> None:
        """Signal the daemon, by pid, only while that pid is still this very process."""
        if self.exit_status is None and _same_process(self.pid, self.start_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM (the daemon unmounts its private mountpoint and exits), SIGKILL after `timeout`;
        then detach whatever is left at the private mountpoint and remove the directory."""
        if self.alive():
            self.send(signal.SIGCONT)  # a stopped daemon cannot act on SIGTERM
            self.send(signal.SIGTERM)
            if not self.wait(timeout):
                self.send(signal.SIGKILL)
                self.wait(timeout)
        self.cleanup()

    def kill(self) -> None:
        self.send(signal.SIGKILL)
        self.wait(5.0)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.reap():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.pidfd < 0:
                return self.exit_status is not None
            select.select([self.pidfd], [], [], min(remaining, 0.05))
        return True

    def cleanup(self) -> None:
        """Detach the private mount (lazily: a dead FUSE mount cannot be unmounted otherwise) and drop the
        instance directory. Safe to call twice."""
        _close_fd(self)
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        for _ in range(8):  # the same path may carry more than one mount after a failed publish
            try:
                syscalls.umount2(self.mnt, syscalls.MNT_DETACH | syscalls.UMOUNT_NOFOLLOW)
            except OSError:
                break
        with contextlib.suppress(OSError):
            os.rmdir(self.mnt)
        with contextlib.suppress(OSError):
            for name in os.listdir(self.dir):  # what the daemon left beside its mountpoint (a pidfile)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, name))
            os.rmdir(self.dir)

    def to_json(self) -> dict:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "dir": self.dir,
            "mountpoint": self.mnt,
            "dev": self.dev_str,
            "ready": self.ready,
        }


def _close_fd(inst: Instance) -> None:
    if inst.pidfd >= 0:
        os.close(inst.pidfd)
        inst.pidfd = -1


def _same_process(pid: int, start_time: int) -> bool:
    try:
        return procfs.pid_start_time(pid) == start_time
    except procfs.ProcessGone:
        return False


def pids_serving(mountpoint: str) -> list[int]:
    """Processes whose command line names `mountpoint` as a word (a daemon started for it)."""
    want = mountpoint.encode()
    out = []
    for pid in procfs.list_pids():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if want in f.read().split(b"\0"):
                out.append(pid)
    return out


def instances_root(state_dir: str) -> str:
    return os.path.join(state_dir, INSTANCES)


def prepare_instances_root(state_dir: str) -> str:
    """Create `{state_dir}/instances` as a private mount of its own, so instance mounts never propagate
    into other mount namespaces (a container or a service created from a shared host root would
    otherwise get copies of every daemon's private mount)."""
    root = instances_root(state_dir)
    os.makedirs(root, mode=0o700, exist_ok=True)
    if not any(m.mount_point == root for m in procfs.read_mountinfo("self")):
        syscalls.mount(root, root, None, syscalls.MS_BIND)
    syscalls.mount("none", root, None, syscalls.MS_PRIVATE)
    return root


def default_command(state_dir: str, serve_args: str = "") -> str:
    """The `serve` command line for an instance ({mountpoint} is filled in per instance). The interpreter
    and package are the installed ones at the time of the start, which is what a reload upgrades to."""
    base = [sys.executable, "-m", "lxcfs_guard.cli", "serve", "--mountpoint", "{mountpoint}", "--state-dir", state_dir]
    return shlex.join(base) + (" " + serve_args if serve_args else "")


def render_command(template: str, mountpoint: str, state_dir: str, instance_dir: str) -> list[str]:
    """Split `template` (shell-like quoting) and fill {mountpoint}, {state_dir}, {instance_dir} in each word."""
    values = {"mountpoint": mountpoint, "state_dir": state_dir, "instance_dir": instance_dir}
    return [word.format(**values) for word in shlex.split(template)]


def launch(role: Role, command: str, state_dir: str, fstype: str) -> Instance:
    """Start a daemon on a fresh private mountpoint, with its own sd_notify socket."""
    token = f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:8]}"
    inst_dir = os.path.join(instances_root(state_dir), token)
    os.makedirs(os.path.join(inst_dir, "mnt"), mode=0o755)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    address = f"lxcfs-guard/{os.getpid()}/{token}"
    sock.bind("\0" + address)
    env = {k: v for k, v in os.environ.items() if k not in _MANAGER_ENV}
    env["NOTIFY_SOCKET"] = "@" + address
    argv = render_command(command, os.path.join(inst_dir, "mnt"), state_dir, inst_dir)
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError:
        sock.close()
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(inst_dir, "mnt"))
            os.rmdir(inst_dir)
        raise
    try:
        start_time = procfs.pid_start_time(proc.pid)
    except procfs.ProcessGone:
        start_time = -1
    return Instance(
        role=role,
        pid=proc.pid,
        start_time=start_time,
        dir=inst_dir,
        fstype=fstype,
        proc=proc,
        pidfd=os.pidfd_open(proc.pid),
        notify=sock,
    )


def adopt(role: Role, record: dict, fstype: str) -> Instance | None:
    """Take over an instance a previous supervisor recorded, if that very process still runs and its mount
    is still where it was. The caller probes it before trusting it."""
    try:
        pid, start_time, inst_dir = int(record["pid"]), int(record["start_time"]), str(record["dir"])
    except (KeyError, TypeError, ValueError):
        return None
    if not _same_process(pid, start_time):
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    inst = Instance(role=role, pid=pid, start_time=start_time, dir=inst_dir, fstype=fstype, pidfd=pidfd)
    inst.dev = inst.find_mount()
    return inst
