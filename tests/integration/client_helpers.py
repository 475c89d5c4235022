"""What the real-client tests (LXC, pod, Docker) check after a crash: that `remount --all`, run as an
operator runs it, repaired every namespace of ours, and what to print when a reader still sees no answer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from lxcfs_guard.testing.supervise import Supervised

OK_ACTIONS = ("repaired", "already_live", "gone")


def mntns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def check_remount_all(g: Supervised, ours: set[int], in_guard_ns: bool = False) -> dict[str, Any]:
    """`remount --all --json` as an operator runs it. Every namespace of ours (mount-namespace inodes) must
    be repaired or already live. The exit code must be 0 unless what is reported broken lies entirely in
    namespaces that are not ours: other tests on this shared machine leave dead mounts of our type behind,
    and `--all` means the whole host."""
    r = g.cli("remount", "--all", "--json", in_guard_ns=in_guard_ns)
    doc: dict[str, Any] = json.loads(r.stdout)
    mine = [n for n in doc["namespaces"] if n["mntns"] in ours]
    assert all(n["action"] in OK_ACTIONS for n in mine), json.dumps(mine, indent=1)
    foreign_broken = [n for n in doc["namespaces"] if n["mntns"] not in ours and n["action"] not in OK_ACTIONS]
    if not foreign_broken:
        assert r.returncode == 0, r.stdout + r.stderr
    return doc


def diagnose(g: Supervised, probe: Callable[[], object], in_guard_ns: bool = False) -> str:
    """For a failure message: what a manual `remount --all` says and what the reader sees after it (tells
    a repair the supervisor missed from one that cannot be done)."""
    r = g.cli("remount", "--all", in_guard_ns=in_guard_ns)
    return f"\n--- remount --all (exit {r.returncode}):\n{r.stdout[-2500:]}{r.stderr[-1000:]}\n--- then: {probe()!r}"
