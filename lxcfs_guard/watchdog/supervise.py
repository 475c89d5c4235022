"""`lxcfs-guard supervise`: keep a FUSE daemon serving, and keep every container bound to it.

One single-threaded process, one poll loop (the remount engine forks its own children and `setns`
needs a single-threaded process). Everything it waits for is an fd:
- a pidfd per daemon instance (readable the moment it exits: a crash is seen at once),
- a probe child's pidfd (the health read runs in a child, with a deadline: a hung read blocks only it),
- an sd_notify socket per instance (READY=1 from `serve`),
- the signal wake-up fd (SIGHUP: zero-downtime restart; SIGTERM/SIGINT: stop),
- the proc connector (pyroute2): registered containers' exits, to unregister them.

Layout: every instance mounts on a private mountpoint under `{state_dir}/instances/`; the host mountpoint
holds a clone of the current primary's mount (`publish`). Faults:
- primary exits -> (hot standby ready? promote it : start a new instance) -> repair containers onto it,
  swap the host mountpoint -> start a new standby;
- probe times out (hang) -> abort the connection through fusectl, SIGKILL, then as above;
- SIGHUP -> start a new instance from the code installed now; when it answers, move every container onto
  it (stale_devs = the old connection), swap the host mountpoint, let in-flight reads finish, stop the old
  one. Nothing is ever dead in between, so a reader sees no failed read.
The status file (`status.py`) is rewritten on every change; sd_notify gets READY=1 only once the mount
answers and the first repair is done, WATCHDOG=1 only after a passing probe, and a one-line STATUS=.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time

from lxcfs_guard import config
from lxcfs_guard.kernel import files, procfs, syscalls
from lxcfs_guard.watchdog import instance, status
from lxcfs_guard.watchdog.adoption import Adoption
from lxcfs_guard.watchdog.failover import Failover
from lxcfs_guard.watchdog.loop import Loop
from lxcfs_guard.watchdog.publishing import Publishing
from lxcfs_guard.watchdog.supervisor_state import LOCK_FILE, Options, log
from lxcfs_guard.watchdog.tracking import Tracking

LOCK_WAIT = 1.0  # seconds: a previous supervise that is just exiting lets go of the lock within this

__all__ = ["Options", "Supervisor", "configure_supervise", "log", "run_supervise"]


def _close_if_same(fd: int, held: os.stat_result) -> None:
    """Close `fd` if it is still the lock file (in a grandchild the number may name another file by now)."""
    with contextlib.suppress(OSError):
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            os.close(fd)


class Supervisor(Loop, Failover, Tracking, Adoption, Publishing):
    """One `supervise` run: the parts (see their modules) over one shared state."""

    def run(self) -> int:
        try:  # private to root (kernel.files): no other user can read our state or hold our locks
            files.private_dir(self.o.state_dir)
            lock = files.open_lock(os.path.join(self.o.state_dir, LOCK_FILE))  # held for our lifetime
        except OSError as e:
            log(f"cannot use the state directory {self.o.state_dir}: {e}")
            return 2
        # Every child we fork (probes, repairs) lets go of the lock at once: one stuck in the kernel must
        # not keep the next supervise from starting. (Popen'ed daemons never see it: close_fds.)
        held = os.fstat(lock)
        os.register_at_fork(after_in_child=lambda: _close_if_same(lock, held))
        try:
            files.lock(lock, time.monotonic() + LOCK_WAIT)
        except files.LockTimeout:
            os.close(lock)
            log(f"another supervise already runs on {self.o.state_dir}")
            return 2
        os.makedirs(os.path.dirname(self.mountpoint), exist_ok=True)
        with contextlib.suppress(FileExistsError):  # not makedirs: a dead mount there fails its isdir()
            os.mkdir(self.mountpoint)
        instance.prepare_instances_root(self.o.state_dir)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        from lxcfs_guard.watchdog.procevents import open_events

        self.events = open_events()
        if self.events is None:
            log("proc connector unavailable: container exits are noticed by the periodic registry check")
        clean = False
        try:
            self._guarded("adoption", self._adopt_or_start)
            if self.primary is None and self.next is None and self.next_at is None:
                self._guarded("the first start", self._launch_next, "start")
            self._loop(wake_r)
            clean = True
        finally:
            if clean:  # a stop asked for (SIGTERM, SIGINT) or the crash-loop limit: take it all down in order
                self._guarded("shutdown", self._shutdown)
            else:  # crash-only: what serves keeps serving; the next supervise adopts it
                log("supervise failed: serve and the host mountpoint are left as they are for the next one")
            if self.events is not None:
                self.events.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in handlers.items():
                signal.signal(s, h)
            wake_r.close()
            wake_w.close()
            os.close(lock)
        return self.exit_code

    def _shutdown(self) -> None:
        """Stop every instance we own and take our mount off the host mountpoint. Containers' binds are left
        as they are: they are repaired when the service starts again."""
        if self.repair is not None:
            self._guarded("cancelling the repair", self._cancel_repair, "cancelled: supervise is stopping")
        devs = {i.dev for i in self._instances() if i.dev is not None}
        for inst in self._instances():
            p = inst.probe
            if p is not None:
                p.cancel(wait=0.2)
            inst.stop(self.o.stop_timeout)
        for dead in self.dead:
            dead.cleanup()
        self.primary = self.standby = self.next = None
        self.retiring, self.dead = [], []
        for _ in range(4):
            top = status.top_mount_dev(procfs.read_mountinfo("self"), self.mountpoint, self.o.fstype)
            if top is None or top not in devs:
                break
            with contextlib.suppress(OSError):
                syscalls.umount2(self.mountpoint, syscalls.MNT_DETACH)
        self.healthy = False
        self._write_status()
        root = instance.instances_root(self.o.state_dir)
        with contextlib.suppress(OSError):
            syscalls.umount2(root, syscalls.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(root)


# --- the command ----------------------------------------------------------------------------------


def configure_supervise(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mountpoint", default=config.default_mountpoint(), help="host mountpoint (default: %(default)s)"
    )
    parser.add_argument(
        "--state-dir", default=config.default_state_dir(), help="state directory (default: %(default)s)"
    )
    parser.add_argument(
        "--exec",
        dest="command",
        default="",
        metavar="CMD",
        help="guard another FUSE daemon instead of `serve`: a command line with {mountpoint} "
        "(also {state_dir}, {instance_dir}); with --standby every instance needs its own pidfile, e.g. "
        "'lxcfs -p {instance_dir}/lxcfs.pid {mountpoint}' --fstype fuse.lxcfs",
    )
    parser.add_argument(
        "--fstype", default=Options.fstype, help="FUSE type of the guarded mount (default: %(default)s)"
    )
    parser.add_argument("--serve-args", default="", help="extra arguments for `serve` (one string)")
    parser.add_argument("--workers", type=int, default=0, help="serving processes per `serve` (default: serve's)")
    parser.add_argument(
        "--standby",
        action=argparse.BooleanOptionalAction,
        default=Options.standby,
        help="keep a second daemon mounted privately to take over at once after a crash (default: on)",
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=Options.probe_interval,
        help="seconds between health probes (default: %(default)s)",
    )
    parser.add_argument(
        "--probe-timeout",
        type=float,
        default=Options.probe_timeout,
        help="a probe read slower than this is a hang (default: %(default)s)",
    )
    parser.add_argument(
        "--probe-file", default=Options.probe_file, help="file read by the probe, relative to the mount"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=Options.start_timeout, help="seconds a new daemon has to answer"
    )
    parser.add_argument(
        "--max-restarts", type=int, default=Options.max_restarts, help="give up after this many restarts ... (0: never)"
    )
    parser.add_argument(
        "--restart-window", type=float, default=Options.restart_window, help="... within this many seconds"
    )
    parser.add_argument(
        "--reload-grace",
        type=float,
        default=Options.reload_grace,
        help="seconds the old daemon keeps serving in-flight reads on reload",
    )
    parser.add_argument(
        "--remount-timeout", type=float, default=Options.remount_timeout, help="per-container repair timeout"
    )
    parser.add_argument(
        "--jobs", type=int, default=Options.jobs, help="parallel repair workers (default: the engine's)"
    )


def run_supervise(args: argparse.Namespace) -> int:
    import faulthandler

    faulthandler.enable()  # systemd's watchdog sends SIGABRT first: leave the stuck stack in the journal
    command = args.command
    if not command:
        serve_args = args.serve_args + (f" --workers {args.workers}" if args.workers else "")
        command = instance.default_command(args.state_dir, serve_args.strip())
    elif "{mountpoint}" not in command:
        print("lxcfs-guard supervise: --exec needs {mountpoint} in the command", file=sys.stderr)
        return 2
    opts = Options(
        mountpoint=args.mountpoint,
        state_dir=os.path.abspath(args.state_dir),
        fstype=args.fstype,
        command=command,
        standby=args.standby,
        probe_interval=args.probe_interval,
        probe_timeout=args.probe_timeout,
        probe_file=args.probe_file,
        start_timeout=args.start_timeout,
        max_restarts=args.max_restarts,
        restart_window=args.restart_window,
        reload_grace=args.reload_grace,
        remount_timeout=args.remount_timeout,
        jobs=args.jobs,
    )
    return Supervisor(opts).run()
