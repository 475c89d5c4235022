"""`lxcfs-guard serve`: mount the filesystem and serve it in the foreground until SIGTERM/SIGINT.

Start-up order matters to the watchdog and to systemd: a dead mount left on the mountpoint (ENOTCONN) is
detached first, or the new mount would fail; READY=1 and the state file `{state_dir}/serve/<pid>.json`
appear only once a read through the mount answers. A clean exit unmounts and removes the state file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from lxcfs_guard import config
from lxcfs_guard.fs import lxcfs_compat
from lxcfs_guard.fs.views.cpus import CPU_VIEWS
from lxcfs_guard.kernel.files import DEAD_ERRNOS, write_atomic

log = logging.getLogger("lxcfs_guard.serve")



def configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mountpoint", default=config.default_mountpoint(),
                        help="where to mount (default %(default)s, env LXCFS_GUARD_MOUNTPOINT)")
    parser.add_argument("--state-dir", default=config.default_state_dir(),
                        help="runtime state directory (default %(default)s, env LXCFS_GUARD_STATE_DIR)")
    parser.add_argument("--cpu-view", choices=CPU_VIEWS, default="cpuset",
                        help="CPUs a container sees: its cpuset, or also cut to ceil(quota/period) (LXCFS --enable-cfs)")
    parser.add_argument("--cgroup-root", default="/sys/fs/cgroup", help="where the cgroup hierarchies are mounted")
    parser.add_argument("--cache-ttl", type=float, default=0.1,
                        help="seconds a rendered file is reused for the same cgroup (0: render every open)")
    parser.add_argument("--loadavg-interval", type=float, default=5.0,
                        help="seconds between loadavg samples (the kernel's decay constants assume 5)")
    parser.add_argument("--max-workers", type=int, default=16, help="FUSE requests in flight at most")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    lxcfs_compat.add_lxcfs_flags(parser)


def detach_dead_mount(mountpoint: str) -> bool:
    """If `mountpoint` is a FUSE mount whose daemon died (stat gives ENOTCONN), lazily detach it."""
    from lxcfs_guard.kernel import syscalls

    try:
        os.stat(mountpoint)
        return False
    except OSError as e:
        if e.errno not in DEAD_ERRNOS:
            raise
    log.warning("detaching the dead mount left on %s", mountpoint)
    syscalls.umount2(mountpoint, syscalls.MNT_DETACH)
    return True


def state_file(state_dir: str, pid: int | None = None) -> str:
    return os.path.join(state_dir, "serve", f"{pid or os.getpid()}.json")


def write_state(state_dir: str, mountpoint: str) -> str:
    """Atomically write {state_dir}/serve/<pid>.json; `status` reads these."""
    path = state_file(state_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {"pid": os.getpid(), "mountpoint": mountpoint, "started": time.time()}
    write_atomic(path, json.dumps(state).encode())
    return path


def fuse_options() -> set[str]:
    """No default_permissions: files are 0444 for everyone, the ro mount refuses writes in the VFS, and
    without it the kernel does not refresh attributes on every path walk (a GETATTR per component)."""
    return {
        f"fsname={config.FSNAME}",
        f"subtype={config.FSNAME}",
        "allow_other",
        "ro",
    }


def run_serve(args: argparse.Namespace) -> int:
    early_exit = lxcfs_compat.apply(args)  # LXCFS's flags -> our settings; pid file; -v
    if early_exit is not None:
        return early_exit
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="lxcfs-guard serve[%(process)d]: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    import pyfuse3
    import trio

    from lxcfs_guard.cgroup import open_reader
    from lxcfs_guard.fs.caller import Resolver
    from lxcfs_guard.fs.content import Content
    from lxcfs_guard.fs.loadavg import LoadSampler
    from lxcfs_guard.fs.operations import Operations
    from lxcfs_guard.fs.pressure import Pressure
    from lxcfs_guard.fs.tree import Tree
    from lxcfs_guard.kernel.notify import notify

    mountpoint = os.path.abspath(args.mountpoint)
    try:
        detach_dead_mount(mountpoint)
    except FileNotFoundError:
        pass
    os.makedirs(mountpoint, exist_ok=True)

    reader = open_reader(args.cgroup_root)
    sampler = LoadSampler(reader) if args.loadavg else None
    content = Content(reader, args.cpu_view, args.cache_ttl, sampler,
                      meminfo_options=lxcfs_compat.meminfo_options(args))
    ops = Operations(Tree(), Resolver(reader), content, Pressure(reader, enabled=args.psi_triggers))
    pyfuse3.init(ops, mountpoint, lxcfs_compat.mount_options(fuse_options(), args))
    log.info("mounted %s (cgroup v%d at %s, cpu view %s)", mountpoint, reader.version, args.cgroup_root, args.cpu_view)

    state_path: list[str] = []

    async def announce_ready() -> None:
        probe = os.path.join(mountpoint, "proc", "meminfo")

        def check() -> None:
            with open(probe, "rb") as f:
                f.read()

        await trio.to_thread.run_sync(check)
        state_path.append(write_state(args.state_dir, mountpoint))
        notify("READY=1")
        notify(f"STATUS=serving {mountpoint}")
        log.info("ready")

    async def watch_signals(cancel: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    continue
                log.info("signal %d: unmounting", signum)
                notify("STOPPING=1")
                pyfuse3.terminate()
                cancel.cancel()
                return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, nursery.cancel_scope)
            if sampler is not None:
                nursery.start_soon(sampler.run, args.loadavg_interval)
            nursery.start_soon(announce_ready)
            await pyfuse3.main(min_tasks=1, max_tasks=max(1, args.max_workers))
            nursery.cancel_scope.cancel()  # the kernel ended the session (umount, abort)

    code = 0
    try:
        trio.run(main)
    except BaseException:
        log.exception("serve failed")
        code = 1
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmount failed")
        lxcfs_compat.remove_pidfile(args)
        for path in state_path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return code
