"""`lxcfs-guard serve`: mount the filesystem and serve it in the foreground until SIGTERM/SIGINT.

Start-up order matters to the watchdog and to systemd: a dead mount left on the mountpoint (ENOTCONN) is
detached first, or the new mount would fail; READY=1 and the state file `{state_dir}/serve/<pid>.json`
appear only once a read through the mount answers. A clean exit unmounts and removes the state file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from lxcfs_guard import config, devices
from lxcfs_guard.fs import lxcfs_compat
from lxcfs_guard.fs.views.cpus import CPU_VIEWS
from lxcfs_guard.kernel.files import DEAD_ERRNOS, write_atomic

if TYPE_CHECKING:  # imported inside run_serve, so the holder's workers share them (see there)
    from lxcfs_guard.cgroup import CgroupReader
    from lxcfs_guard.fs.content import Content

log = logging.getLogger("lxcfs_guard.serve")
MAX_DEFAULT_WORKERS = 8


def configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mountpoint",
        default=config.default_mountpoint(),
        help="where to mount (default %(default)s, env LXCFS_GUARD_MOUNTPOINT)",
    )
    parser.add_argument(
        "--state-dir",
        default=config.default_state_dir(),
        help="runtime state directory (default %(default)s, env LXCFS_GUARD_STATE_DIR)",
    )
    parser.add_argument(
        "--cpu-view",
        choices=CPU_VIEWS,
        default="cpuset",
        help="CPUs a container sees: its cpuset, or also cut to ceil(quota/period) (LXCFS --enable-cfs)",
    )
    parser.add_argument(
        "--cpu-dir-view",
        choices=("host", "container"),
        default="host",
        help="sys/devices/system/cpu beyond online: the host's present/possible/cpuN (LXCFS) or "
        "the caller's, matching online (see fs/sysfs_cpu.py for why host is the default)",
    )
    parser.add_argument("--cgroup-root", default="/sys/fs/cgroup", help="where the cgroup hierarchies are mounted")
    parser.add_argument(
        "--cache-ttl",
        type=float,
        default=0.1,
        help="seconds a rendered file is reused for the same cgroup (0: render every open)",
    )
    parser.add_argument(
        "--loadavg-interval",
        type=float,
        default=5.0,
        help="seconds between loadavg samples (the kernel's decay constants assume 5)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="serving processes on the one mount (default: one per CPU, at most "
        f"{MAX_DEFAULT_WORKERS}); a worker that dies is replaced and its requests resent",
    )
    parser.add_argument(
        "--no-resend",
        action="store_true",
        help="when a worker dies, end its in-flight request (ECONNABORTED) instead of asking the "
        "kernel to resend it; what kernels before 6.9 do anyway (for tests)",
    )
    parser.add_argument(
        "--max-worker-restarts",
        type=int,
        default=30,
        help="more worker deaths than this within 60 s is a crash loop: serve exits",
    )
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    lxcfs_compat.add_lxcfs_flags(parser)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


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


def record_device(state_dir: str, mountpoint: str) -> None:
    """Record our mount's device as ours (the remount engine acts only on recorded devices). statx with
    AT_STATX_DONT_SYNC on an O_PATH fd of the mountpoint: no FUSE request, so the holder cannot block on a
    worker that does not answer."""
    from lxcfs_guard.kernel import syscalls

    fd = os.open(mountpoint, os.O_PATH | os.O_CLOEXEC)
    try:
        dev = syscalls.statx_cached(fd)[1]
    finally:
        os.close(fd)
    devices.record(state_dir, dev, mountpoint)


def state_file(state_dir: str, pid: int | None = None) -> str:
    return os.path.join(state_dir, "serve", f"{pid or os.getpid()}.json")


def write_state(state_dir: str, mountpoint: str, extra: dict | None = None, started: float | None = None) -> str:
    """Atomically write {state_dir}/serve/<pid>.json; `status` reads these. `extra`: the workers."""
    path = state_file(state_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {"pid": os.getpid(), "mountpoint": mountpoint, "started": started or time.time(), **(extra or {})}
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
    # Everything a worker needs is imported here, in the holder, before it forks: the workers share
    # these pages with it instead of each importing its own copy (the workers run no event loop:
    # fs/syncloop, which also keeps pyfuse3 from loading trio).
    import socket

    from lxcfs_guard.fs import syncloop

    pyfuse3 = syncloop.import_pyfuse3()
    from lxcfs_guard.cgroup import open_reader
    from lxcfs_guard.fs import arena, loadavg
    from lxcfs_guard.fs.caller import Resolver
    from lxcfs_guard.fs.connection import Holder
    from lxcfs_guard.fs.content import Content
    from lxcfs_guard.fs.operations import Operations
    from lxcfs_guard.fs.pressure import Pressure
    from lxcfs_guard.fs.sysfs_cpu import CpuDir
    from lxcfs_guard.fs.tree import Tree
    from lxcfs_guard.kernel.notify import notify

    mountpoint = os.path.abspath(args.mountpoint)
    with contextlib.suppress(FileNotFoundError):
        detach_dead_mount(mountpoint)
    os.makedirs(mountpoint, exist_ok=True)
    workers = args.workers if args.workers else default_workers()
    if args.psi_triggers and workers != 1:
        # A PSI trigger fd lives in the process that wrote it, and a later POLL of the same file may reach
        # any worker: until trigger specs are shared between workers, triggers mean one worker.
        if args.workers:
            log.warning(
                "--enable-psi-poll serves with one worker (triggers are per process): --workers %d ignored",
                args.workers,
            )
        workers = 1
    if not 1 <= workers <= arena.MAX_SLOTS:
        log.error("--workers must be 1..%d", arena.MAX_SLOTS)
        return 2

    reader = open_reader(args.cgroup_root)
    snapshots = arena.make_mapping(workers)
    service = None
    if args.loadavg:  # the LXCFS drop-in without -l serves the host's loadavg, like LXCFS
        table = loadavg.make_table()
        to_sampler, sampler_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        to_sampler.setblocking(False)
        service = loadavg.SamplerService(reader, table, sampler_end, args.loadavg_interval)
    content = Content(
        reader,
        args.cpu_view,
        args.cache_ttl,
        loadavg.SharedLoad(table, to_sampler) if service is not None else None,
        meminfo_options=lxcfs_compat.meminfo_options(args),
    )
    cpudir = CpuDir(content.visible_cpus, content.online_bytes, args.cpu_dir_view, renumber=args.cpu_view == "quota")
    ops = Operations(Tree(), Resolver(reader), content, cpudir, Pressure(reader, enabled=args.psi_triggers))

    def worker_setup(slot: int) -> None:
        ops.snapshots = arena.Arena(snapshots, slot)

    holder = Holder(
        ops,
        mountpoint,
        lxcfs_compat.mount_options(fuse_options(), args),
        workers,
        resend=not args.no_resend,
        worker_setup=worker_setup,
        max_restarts=args.max_worker_restarts,
        service=service,
        private_fds=(sampler_end.fileno(),) if service is not None else (),
    )
    state_path: list[str] = []

    def write() -> None:
        extra = {
            "workers": [w.to_json() for w in sorted(holder.workers.values(), key=lambda w: w.slot)],
            "worker_restarts": holder.worker_restarts,
            "resends": holder.resends,
        }
        state_path[:] = [write_state(args.state_dir, mountpoint, extra, started)]

    def on_ready() -> None:
        record_device(args.state_dir, mountpoint)
        write()
        notify("READY=1")
        notify(f"STATUS=serving {mountpoint} with {workers} worker{'s' if workers != 1 else ''}")
        log.info(
            "ready: %d worker%s (pids %s)",
            workers,
            "s" if workers != 1 else "",
            " ".join(str(w.pid) for w in holder.workers.values()),
        )

    started = time.time()
    code = 1
    mounted = False
    try:
        warm_up(content, reader)  # before the mount: no request waits for it
        holder.mount()
        mounted = True
        log.info(
            "mounted %s (cgroup v%d at %s, cpu view %s)", mountpoint, reader.version, args.cgroup_root, args.cpu_view
        )
        holder.start()
        code = holder.run(on_ready, write)
        if code == 0 and not holder.ended:
            log.info("signal: unmounting")
            notify("STOPPING=1")
    except BaseException:
        log.exception("serve failed")
        code = 1
    finally:
        holder.stop()
        if mounted:
            try:
                pyfuse3.close(unmount=True)
            except Exception:
                log.exception("unmount failed")
        lxcfs_compat.remove_pidfile(args)
        for path in state_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return code


def warm_up(content: Content, reader: CgroupReader) -> None:
    """The holder renders its own cgroup's files before forking the workers (see Content.warm), then closes
    the cgroup files the renders kept open: the holder never reads them again."""
    from lxcfs_guard.fs.caller import View

    started = time.monotonic()
    try:
        content.warm(View(ref=reader.ref_for_pid(os.getpid()), init_pid=1, init_start=0, host=True))
        log.info("views warmed up in %.0f ms", (time.monotonic() - started) * 1000)
    except Exception:  # never a reason not to serve
        log.warning("warming the views up failed", exc_info=True)
    finally:
        files = getattr(reader, "files", None)
        if files is not None:
            files.close()
