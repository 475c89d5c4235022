"""CLI commands of the remount engine: `remount`, `attach`, `register`, `unregister`, `list`.

`remount` is on the recovery path (systemd ExecStartPost, the watchdog, an admin after a crash), so this
module imports only the engine and the standard library's light parts; `--json` everywhere a script reads
the output, and a non-zero exit whenever something is left broken.
"""

from __future__ import annotations

import argparse
import os
import sys

from lxcfs_guard import config


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument(
        "--mountpoint",
        default=None,
        help="the live mount to clone from (default: $LXCFS_GUARD_MOUNTPOINT or /var/lib/lxcfs)",
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="registry and lock directory (default: $LXCFS_GUARD_STATE_DIR or /run/lxcfs-guard)",
    )
    parser.add_argument(
        "--fstype",
        default=config.FSTYPE,
        help=f"filesystem type of the binds (default {config.FSTYPE}; fuse.lxcfs guards stock LXCFS)",
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print a JSON report")


def _paths(args: argparse.Namespace) -> tuple[str, str]:
    return args.mountpoint or config.default_mountpoint(), args.state_dir or config.default_state_dir()


def _dev(text: str) -> int:
    major, _, minor = text.partition(":")
    try:
        return os.makedev(int(major), int(minor))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not MAJOR:MINOR: {text!r}") from None


def _binds(files: list[str] | None, flags: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(source, target, flags) for `files` (default: the standard set) and the targets that are optional."""
    chosen = files or list(config.DEFAULT_BINDS)
    optional = [config.target_for(config.CPU_ONLINE)] if not files else []
    return [(f.lstrip("/"), config.target_for(f), flags) for f in chosen], optional


# --- remount -------------------------------------------------------------------------------------------------


def configure_remount(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every registered and discovered container")
    which.add_argument("--id", action="append", dest="ids", metavar="ID", help="this registered container (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be done, touch nothing")
    parser.add_argument(
        "--stale-dev",
        action="append",
        type=_dev,
        metavar="MAJ:MIN",
        help="repair binds of this device even if its daemon still answers (a reload); "
        "default: binds of dead connections of devices recorded as ours",
    )
    parser.add_argument(
        "--any-device",
        action="store_true",
        help="also repair dead connections not recorded as ours in STATE_DIR/devices (a stock "
        "LXCFS never records its devices; the fstype alone is chosen by whoever mounts)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds allowed per container (default 5); the live mount gets min(this, 2) s "
        "to answer, else nothing is done",
    )
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: by CPUs and work)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument(
        "--no-beneath", action="store_true", help="detach then move, as on kernels without MOVE_MOUNT_BENEATH"
    )
    _common(parser)


def run_remount(args: argparse.Namespace) -> int:
    from lxcfs_guard.remount import engine

    mountpoint, state_dir = _paths(args)
    report = engine.remount(
        mountpoint,
        state_dir,
        fstype=args.fstype,
        ids=args.ids,
        stale_devs=set(args.stale_dev) if args.stale_dev else None,
        dry_run=args.dry_run,
        timeout=args.timeout,
        jobs=args.jobs,
        threads=args.threads,
        beneath=False if args.no_beneath else None,
        any_device=args.any_device,
    )
    from lxcfs_guard.remount.report import encodable

    print(report.to_json() if args.json else encodable(report.text(), sys.stdout.encoding))
    return 0 if report.ok else 1


# --- attach ----------------------------------------------------------------------------------------------------


def configure_attach(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", required=True, help="the container's id (registry key)")
    parser.add_argument("--pid", required=True, type=int, help="the container's init pid (host pid namespace)")
    parser.add_argument(
        "--files",
        nargs="+",
        metavar="FILE",
        help="files of the filesystem to bind (default: the seven proc files, plus "
        "sys/devices/system/cpu/online where the container has it)",
    )
    parser.add_argument(
        "--flags", default="", help="per-mount options for the binds, e.g. ro,nosuid,nodev (default: the live mount's)"
    )
    _common(parser)


def run_attach(args: argparse.Namespace) -> int:
    from lxcfs_guard.kernel.procfs import ProcessGone
    from lxcfs_guard.remount import discovery, engine
    from lxcfs_guard.remount.plan import top_mounts
    from lxcfs_guard.remount.registry import Bind, Registry

    mountpoint, state_dir = _paths(args)
    binds, optional = _binds(args.files, args.flags)
    try:
        rep = engine.attach(
            args.pid, mountpoint, binds, fstype=args.fstype, optional=optional, cid=args.id, state_dir=state_dir
        )
    except ProcessGone:
        print(f"lxcfs-guard attach: pid {args.pid} does not exist", file=sys.stderr)
        return 1
    except engine.AttachError as e:
        if args.json:
            import json

            print(json.dumps(e.report.to_dict(), indent=1))
        else:
            print(f"lxcfs-guard attach: {e.report.line()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"lxcfs-guard attach: {e}", file=sys.stderr)
        return 1
    # Register what is bound now (an optional target the container lacks is not).
    proc_fd = discovery.open_proc()
    try:
        view = discovery.scan(args.fstype, proc_fd, pids=[args.pid]).get(rep.mntns)
    finally:
        os.close(proc_fd)
    bound = top_mounts(view.mounts if view else ())
    Registry(state_dir).add_container(args.id, args.pid, [Bind(*b) for b in binds if b[1] in bound])
    if args.json:
        import json

        print(json.dumps(rep.to_dict(), indent=1))
    else:
        print(rep.line())
    return 0


# --- register / unregister ----------------------------------------------------------------------------------------


def configure_register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", required=True, help="the container's id (registry key)")
    parser.add_argument("--pid", required=True, type=int, help="the container's init pid (host pid namespace)")
    parser.add_argument(
        "--files",
        nargs="+",
        metavar="FILE",
        help="the files it should have bound (default: the binds of FSTYPE it has now)",
    )
    parser.add_argument("--flags", default="", help="per-mount options with --files")
    _common(parser)


def run_register(args: argparse.Namespace) -> int:
    from lxcfs_guard.kernel import procfs
    from lxcfs_guard.remount import discovery
    from lxcfs_guard.remount.plan import top_mounts
    from lxcfs_guard.remount.registry import Bind, Registry

    _, state_dir = _paths(args)
    if args.files:
        binds = [Bind(*b) for b in _binds(args.files, args.flags)[0]]
    else:
        proc_fd = discovery.open_proc()
        try:
            views = discovery.scan(args.fstype, proc_fd, pids=[args.pid])
        finally:
            os.close(proc_fd)
        mounts = next(iter(views.values())).mounts if views else []
        binds = [
            Bind(
                m.root, m.target, ",".join(o for o in m.options.split(",") if o in ("ro", "nosuid", "nodev", "noexec"))
            )
            for m in top_mounts(mounts).values()
        ]
    try:
        entry = Registry(state_dir).add_container(args.id, args.pid, binds)
    except procfs.ProcessGone:
        print(f"lxcfs-guard register: pid {args.pid} does not exist", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"lxcfs-guard register: {e}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps({"id": entry.id, **entry.to_dict()}, indent=1))
    else:
        print(f"registered {entry.id}: pid {entry.pid}, {len(entry.binds)} bind(s)")
    return 0


def configure_unregister(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id", required=True, help="the container to forget (its binds stay as they are)")
    _common(parser)  # the same options as every command, so scripts can pass one set


def run_unregister(args: argparse.Namespace) -> int:
    from lxcfs_guard.remount.registry import Registry

    removed = Registry(_paths(args)[1]).remove(args.id)
    if args.json:
        import json

        print(json.dumps({"id": args.id, "removed": removed}))
    elif removed:
        print(f"unregistered {args.id}")
    else:
        print(f"lxcfs-guard unregister: {args.id} is not registered", file=sys.stderr)
    return 0 if removed else 1


# --- list ------------------------------------------------------------------------------------------------------------


def configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-probe", action="store_true", help="do not ask stale connections whether they are dead (just say 'stale')"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds any daemon is given to answer (default 2): a hung one is reported, not waited for",
    )
    _common(parser)


def run_list(args: argparse.Namespace) -> int:
    from lxcfs_guard.remount import inventory

    mountpoint, state_dir = _paths(args)
    rows, warnings = inventory.inventory(
        mountpoint,
        state_dir,
        args.fstype,
        probe=not args.no_probe,
        probe_timeout=min(args.timeout, 1.0),
        answer_timeout=args.timeout,
    )
    if args.json:
        import json

        print(json.dumps({"warnings": warnings, "containers": rows}, indent=1))
        return 0
    for w in warnings:
        print(f"warning: {w}")
    print(f"{'ID':<32} {'PID':>8}  {'STATE':<8} BINDS")
    for row in rows:
        print(f"{row['id']:<32} {row['pid']:>8}  {row['state']:<8} {row['binds']}")
    return 0
