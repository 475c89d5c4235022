"""LXCFS 7.0's command line, so an existing `lxcfs.service` can run us by changing only its binary.

Two ways in:
- `lxcfs-guard serve ...` also takes LXCFS's flags, with their meaning, on top of our own defaults
  (loadavg and the zswap/swap lines on unless a flag turns them off; PSI triggers, as in LXCFS 7.0, only
  with --enable-psi-poll, which also means one worker process: see fs/pressure.py);
- `lxcfs-guard lxcfs [LXCFS FLAGS] MOUNTPOINT` (or the binary called as `lxcfs`) is LXCFS itself as a command
  line: LXCFS's defaults too (loadavg only with -l, PSI triggers only with --enable-psi-poll, a pidfile at
  {runtime-dir}/lxcfs.pid locked against a second instance), so `ExecStart=/usr/bin/lxcfs /var/lib/lxcfs`
  becomes `ExecStart=/usr/local/bin/lxcfs-guard lxcfs /var/lib/lxcfs`.

LXCFS 7.0.0's main() takes (getopt "dulfhvso:p:" plus long options): -d/--debug, -f/--foreground,
-h/--help, -l/--enable-loadavg, -o OPTS, -p/--pidfile FILE, -s (legacy, ignored), -u/--disable-swap,
-v/--version, --disable-zswap (its short -z is listed but missing from the getopt string; we take both),
--enable-cfs, --enable-pidfd (deprecated), --enable-psi-poll, --runtime-dir DIR. A flag that means nothing
here is accepted with a warning on stderr, never silently. ExecReload's SIGUSR1 (LXCFS reloads its library)
and SIGUSR2 (LXCFS toggles virtualization) are logged and ignored: they must not kill the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import sys
from typing import Any

from lxcfs_guard import __version__

log = logging.getLogger("lxcfs_guard.serve")

LXCFS_VERSION = "7.0.0"
DEFAULT_RUNTIME_DIR = "/run"
# -o options LXCFS itself drops because they are its defaults anyway (or meaningless with fuse3)
DROPPED_FUSE_OPTS = ("allow_other", "direct_io", "entry_timeout", "attr_timeout", "nonempty")
_pidfile_fds: list[int] = []  # held open (and locked) for the life of the process


def add_lxcfs_flags(parser: argparse.ArgumentParser) -> None:
    """LXCFS 7.0's flags, in their own help group; dests are prefixed so none collides with serve's own."""
    g = parser.add_argument_group("LXCFS 7.0 flags (lxcfs.service drop-in; same meaning as in LXCFS)")
    g.add_argument(
        "-l",
        "--enable-loadavg",
        dest="lxcfs_loadavg",
        action="store_true",
        help="virtualize loadavg (serve: always on; `lxcfs`: host loadavg without it)",
    )
    g.add_argument(
        "-u",
        "--disable-swap",
        dest="lxcfs_disable_swap",
        action="store_true",
        help="no swap: SwapTotal/SwapFree 0, /proc/swaps empty",
    )
    g.add_argument(
        "-z", "--disable-zswap", dest="lxcfs_disable_zswap", action="store_true", help="Zswap/Zswapped read 0"
    )
    g.add_argument(
        "--enable-cfs",
        dest="lxcfs_enable_cfs",
        action="store_true",
        help="cut the CPUs to ceil(quota/period), tightest up the tree (= --cpu-view quota)",
    )
    g.add_argument(
        "--enable-psi-poll",
        dest="lxcfs_psi_poll",
        action="store_const",
        const=True,
        default=None,
        help="PSI triggers: write() to proc/pressure/* registers one, poll() waits for it "
        "(serve: on by default; `lxcfs`: off without it)",
    )
    g.add_argument(
        "--disable-psi-poll",
        dest="lxcfs_psi_poll",
        action="store_const",
        const=False,
        help="(ours) pressure files read-only, the mount stays `ro`",
    )
    g.add_argument(
        "--enable-pidfd",
        dest="lxcfs_pidfd",
        action="store_true",
        help="accepted with a warning (deprecated in LXCFS; pid reuse is checked by namespace here)",
    )
    g.add_argument(
        "-p",
        "--pidfile",
        dest="lxcfs_pidfile",
        metavar="FILE",
        help="write and lock a pid file; a second instance on the same file refuses to start",
    )
    g.add_argument(
        "--runtime-dir",
        dest="lxcfs_runtime_dir",
        metavar="DIR",
        help=f"directory of the default pid file DIR/lxcfs.pid (LXCFS default {DEFAULT_RUNTIME_DIR})",
    )
    g.add_argument(
        "-f",
        "--foreground",
        dest="lxcfs_foreground",
        action="store_true",
        help="run in the foreground (we always do, as LXCFS 7.0 does)",
    )
    g.add_argument("-d", dest="lxcfs_debug", action="store_true", help="debug logging (= --debug)")
    g.add_argument(
        "-o",
        dest="lxcfs_fuse_opts",
        metavar="OPTS",
        help="extra FUSE mount options, comma-separated (allow_other, direct_io, entry_timeout, "
        "attr_timeout, nonempty are dropped as LXCFS drops them)",
    )
    g.add_argument("-s", dest="lxcfs_single", action="store_true", help="legacy; ignored with a warning")
    g.add_argument("-v", "--version", dest="lxcfs_version", action="store_true", help="print the version")
    g.add_argument(
        "--memory-high",
        choices=("limit", "ignore"),
        default="limit",
        help="(ours) memory.high below memory.max is MemTotal (limit) or not (ignore); default %(default)s",
    )


def configure_lxcfs(parser: argparse.ArgumentParser) -> None:
    from lxcfs_guard import config

    parser.description = (
        "LXCFS 7.0's command line: `lxcfs-guard lxcfs [FLAGS] MOUNTPOINT` runs `serve` with LXCFS's defaults"
    )
    add_lxcfs_flags(parser)
    parser.add_argument("--debug", action="store_true", help="debug logging")
    parser.add_argument("--state-dir", default=config.default_state_dir(), help="(ours) runtime state directory")
    parser.add_argument("mountpoint", nargs="?", help="where to mount (LXCFS: required)")


def run_lxcfs(args: argparse.Namespace) -> int:
    """Build serve's arguments from LXCFS's and run serve."""
    from lxcfs_guard.fs import daemon

    if args.lxcfs_version:
        print_version()
        return 0
    if not args.mountpoint:
        print("lxcfs-guard lxcfs: missing mountpoint (usage: lxcfs-guard lxcfs [FLAGS] MOUNTPOINT)", file=sys.stderr)
        return 1
    serve_parser = argparse.ArgumentParser(prog="lxcfs-guard serve")
    daemon.configure_serve(serve_parser)
    serve_args = serve_parser.parse_args(["--mountpoint", args.mountpoint, "--state-dir", args.state_dir])
    for key, value in vars(args).items():
        if key.startswith("lxcfs_") or key in ("memory_high", "debug"):
            setattr(serve_args, key, value)
    serve_args.lxcfs_drop_in = True
    return daemon.run_serve(serve_args)


def print_version() -> None:
    print(f"lxcfs-guard {__version__} (LXCFS {LXCFS_VERSION} command line)")


def apply(args: argparse.Namespace) -> int | None:
    """Turn LXCFS's flags into serve's settings, in place; warn about the ones that change nothing here.
    Returns an exit code when serve must stop right away (-v, a bad combination, a locked pid file)."""
    drop_in = bool(getattr(args, "lxcfs_drop_in", False))

    def g(name: str, default: Any = None) -> Any:  # serve's parser is built elsewhere: every flag optional
        return getattr(args, name, default)

    if g("lxcfs_version"):
        print_version()
        return 0
    if g("lxcfs_debug") and g("lxcfs_foreground"):
        print("lxcfs-guard: both -d/--debug and -f/--foreground given (LXCFS refuses that too)", file=sys.stderr)
        return 1
    if g("lxcfs_debug"):
        args.debug = True
    if g("lxcfs_enable_cfs"):
        args.cpu_view = "quota"
    args.loadavg = True if not drop_in else bool(g("lxcfs_loadavg"))
    psi = g("lxcfs_psi_poll")
    args.psi_triggers = bool(psi)  # opt-in, as in LXCFS 7.0 (and it means one worker: see daemon.run_serve)
    args.swap = not g("lxcfs_disable_swap", False)
    args.zswap = not g("lxcfs_disable_zswap", False)
    args.memory_high = g("memory_high", "limit") or "limit"
    args.extra_fuse_options = fuse_passthrough(g("lxcfs_fuse_opts"))
    for flag, why in warnings_for(args, drop_in):
        print(f"lxcfs-guard: warning: {flag}: {why}", file=sys.stderr)
    pidfile = g("lxcfs_pidfile")
    if pidfile is None and (drop_in or g("lxcfs_runtime_dir")):
        pidfile = os.path.join(g("lxcfs_runtime_dir") or DEFAULT_RUNTIME_DIR, "lxcfs.pid")
    if pidfile:
        try:
            _pidfile_fds.append(write_pidfile(pidfile))
        except OSError as e:
            print(f"lxcfs-guard: pid file {pidfile}: {e.strerror or e}", file=sys.stderr)
            return 1
        args.pidfile_path = pidfile
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, _ignored_signal)
    return None


def warnings_for(args: argparse.Namespace, drop_in: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if getattr(args, "lxcfs_pidfd", False):
        out.append(
            (
                "--enable-pidfd",
                "deprecated in LXCFS; here a caller's pid is checked by its namespace, nothing to enable",
            )
        )
    if getattr(args, "lxcfs_single", False):
        out.append(("-s", "legacy single-thread flag; ignored (LXCFS ignores it too)"))
    if getattr(args, "lxcfs_loadavg", False) and not drop_in:
        out.append(("-l/--enable-loadavg", "serve always virtualizes loadavg; nothing changes"))
    dropped = [
        o
        for o in (getattr(args, "lxcfs_fuse_opts", None) or "").split(",")
        if o and o.split("=")[0] in DROPPED_FUSE_OPTS
    ]
    if dropped:
        out.append(("-o " + ",".join(dropped), "always in effect here (as in LXCFS); dropped"))
    return out


def fuse_passthrough(opts: str | None) -> set[str]:
    """LXCFS's -o minus the options LXCFS drops itself."""
    return {o for o in (opts or "").split(",") if o and o.split("=")[0] not in DROPPED_FUSE_OPTS}


def mount_options(base: set[str], args: argparse.Namespace) -> set[str]:
    """serve's FUSE options with -o added; without `ro` when PSI triggers are on (pressure files take writes:
    the superblock's ro would refuse them in the VFS; every other write still gets EROFS from operations)."""
    out = set(base) | set(getattr(args, "extra_fuse_options", set()) or ())
    if getattr(args, "psi_triggers", False):
        out.discard("ro")
    return out


def write_pidfile(path: str) -> int:
    """Like LXCFS: open, take a write lock (a second instance fails here), truncate, write our pid.
    The fd stays open (the lock with it); `remove_pidfile` unlinks it on exit."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise OSError(e.errno, "already locked by another instance") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_pidfile(args: argparse.Namespace) -> None:
    path = getattr(args, "pidfile_path", None)
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    while _pidfile_fds:
        os.close(_pidfile_fds.pop())


def _ignored_signal(signum: int, _frame: object) -> None:
    names: dict[int, str] = {
        signal.SIGUSR1: "SIGUSR1 (LXCFS: reload its library)",
        signal.SIGUSR2: "SIGUSR2 (LXCFS: toggle virtualization)",
    }
    what = names.get(signum, str(signum))
    log.warning(
        "%s ignored: the code is loaded once per process; `lxcfs-guard supervise` restarts with zero "
        "downtime on SIGHUP",
        what,
    )


def meminfo_options(args: argparse.Namespace):  # -> meminfo.MeminfoOptions (imported lazily: serve only)
    from lxcfs_guard.fs.views.meminfo import MeminfoOptions

    return MeminfoOptions(
        swap=getattr(args, "swap", True),
        zswap=getattr(args, "zswap", True),
        memory_high=getattr(args, "memory_high", "limit") == "limit",
    )
