"""The one entry point, `lxcfs-guard`. Each sub-command lives in its own module and is imported only when
it runs: `remount` is on the recovery path and must not pay for trio, pyfuse3 or pyroute2.

A command module provides `configure_<name>(parser)` and `run_<name>(args) -> int`.
"""

from __future__ import annotations

import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("lxcfs_guard.fs.daemon", "run the cgroup-aware /proc FUSE filesystem in the foreground"),
    "supervise": (
        "lxcfs_guard.watchdog.supervise",
        "run `serve` under a watchdog that restarts it and repairs containers",
    ),
    "remount": ("lxcfs_guard.remount.commands", "repair containers whose binds point at a dead FUSE connection"),
    "attach": ("lxcfs_guard.remount.commands", "bind the virtual /proc files into a running container and register it"),
    "register": ("lxcfs_guard.remount.commands", "record a container whose binds were made elsewhere"),
    "unregister": ("lxcfs_guard.remount.commands", "forget a container"),
    "list": ("lxcfs_guard.remount.commands", "list registered and discovered containers"),
    "status": ("lxcfs_guard.watchdog.status", "show the daemon's health, restarts and containers"),
    "oci-hook": (
        "lxcfs_guard.oci.hook",
        "OCI runtime hook: bind the files into a new container (createRuntime/poststop)",
    ),
    "lxcfs": (
        "lxcfs_guard.fs.lxcfs_compat",
        "LXCFS 7.0's command line: `lxcfs [FLAGS] MOUNTPOINT` (lxcfs.service drop-in)",
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lxcfs-guard COMMAND [options]   (lxcfs-guard COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.path.basename(sys.argv[0]) == "lxcfs":  # installed as /usr/bin/lxcfs: LXCFS's own command line
        argv = ["lxcfs", *argv]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from lxcfs_guard import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"lxcfs-guard: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    import argparse
    import importlib

    module = importlib.import_module(COMMANDS[name][0])
    attr = name.replace("-", "_")
    parser = argparse.ArgumentParser(prog=f"lxcfs-guard {name}", description=COMMANDS[name][1])
    getattr(module, f"configure_{attr}")(parser)
    args = parser.parse_args(argv[1:])
    return int(getattr(module, f"run_{attr}")(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
