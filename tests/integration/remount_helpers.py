"""Shared pieces of the remount integration tests: a restartable daemon per test, the CLI, mount counts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from lxcfs_guard.testing.containers import LightContainer
from lxcfs_guard.testing.daemon import LXCFS_GUARD
from lxcfs_guard.testing.restartable import Restartable


@contextlib.contextmanager
def daemon(lxcfs: bool = False, parent: str | None = None) -> Iterator[Restartable]:
    """A daemon on a fresh mountpoint (under `parent`, if given) with a fresh state dir (both removed
    afterwards)."""
    mountpoint = tempfile.mkdtemp(prefix="lxcfs-guard-rm-mnt-", dir=parent)
    state_dir = tempfile.mkdtemp(prefix="lxcfs-guard-rm-state-")
    d = Restartable(mountpoint, state_dir, lxcfs=lxcfs)
    try:
        with d:
            yield d
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(mountpoint)


def cli(d: Restartable, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`lxcfs-guard ARGS --mountpoint M --state-dir S --fstype T` (text output captured)."""
    cmd = [LXCFS_GUARD, *args, "--mountpoint", d.mountpoint, "--state-dir", d.state_dir, "--fstype", d.fstype]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def remount_json(d: Restartable, *args: str) -> tuple[int, dict]:
    proc = cli(d, "remount", "--json", *args)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"remount printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None


def actions(report: dict, pids: set[int] | None = None) -> dict[int, str]:
    """pid -> action of the report's namespaces (only `pids`, if given: another test run's containers may
    show up in a full scan of the host)."""
    return {ns["pid"]: ns["action"] for ns in report["namespaces"] if pids is None or ns["pid"] in pids}


def our_mounts(c: LightContainer, fstype: str) -> list[tuple[str, str, str]]:
    """(target, device, per-mount options) of every mount of `fstype` in the container, sorted."""
    out = []
    for line in c.mounts_of(fstype):
        f = line.split()
        out.append((f[4], f[2], f[5]))
    return sorted(out)


def assert_exit_code(rc: int, report: dict, pids: set[int]) -> None:
    """The exit code is 0 exactly when nothing is left broken. A full scan of this shared host may meet
    another test run's broken containers (theirs to fix, and possibly refused): then 1 is right too, but
    never because of ours."""
    ours_ok = all(ns["action"] in ("repaired", "already_live", "gone") for ns in report["namespaces"] if ns["pid"] in pids)
    others_ok = all(ns["action"] in ("repaired", "already_live", "gone") for ns in report["namespaces"]
                    if ns["pid"] not in pids) and report["error"] is None
    assert ours_ok, report
    assert rc == (0 if others_ok else 1) and report["ok"] == others_ok, report
