"""The remount engine on kernel 6.1 (no MOVE_MOUNT_BENEATH): its detach-then-move path, for real.

A container (its own private mount namespace, its own 64 MiB cgroup) gets the files bound in with
`lxcfs-guard attach`; the daemon is SIGKILLed, so every bind in the container answers ENOTCONN; a new daemon
mounts on the same mountpoint and `lxcfs-guard remount --all` repairs the container in place: each target is
on the new connection again, exactly once (nothing stacked), with its flags, and reads the container's limit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid

import pytest

from lxcfs_guard import config
from lxcfs_guard.kernel import procfs
from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import LXCFS_GUARD, serve
from lxcfs_guard.testing.procs import force_unmount, is_mounted, stop
from tests.v2.util import meminfo_kb, read_in, start_in

pytestmark = pytest.mark.v2
MiB = 1024 * 1024
FLAGS = "ro,nosuid,nodev"


def _mounts_at(pid: int, targets: set[str]) -> dict[str, list[tuple[str, str, str]]]:
    """target -> [(major:minor, fstype, per-mount options)] for every mount stacked on it in pid's namespace."""
    out: dict[str, list[tuple[str, str, str]]] = {t: [] for t in targets}
    for m in procfs.read_mountinfo(pid):
        if m.mount_point in out:
            out[m.mount_point].append((f"{m.major}:{m.minor}", m.fstype, m.mount_options))
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LXCFS_GUARD, *args], capture_output=True, text=True, timeout=120)


def test_binds_survive_a_sigkill_of_the_daemon_via_detach_then_move() -> None:
    from lxcfs_guard.kernel import syscalls

    assert not syscalls.move_mount_beneath_supported(), "this test is about kernels without MOVE_MOUNT_BENEATH"
    work = tempfile.mkdtemp(prefix="lxcfs-guard-v2-remount-")
    mnt, state = f"{work}/mnt", f"{work}/state"
    os.makedirs(mnt)
    os.makedirs(state)
    cid = f"v2-{uuid.uuid4().hex[:8]}"
    targets = {config.target_for(f) for f in config.DEFAULT_BINDS}
    try:
        with make_cgroup(memory=64 * MiB) as cg, serve(mountpoint=mnt, state_dir=state, timeout=120) as first:
            # The container: a private mount namespace that, like a real one, holds no copy of the host's mount.
            ct = start_in(cg, ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f'umount -l {mnt} && echo ready && exec sleep 600'],
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
            try:
                assert ct.stdout is not None and ct.stdout.readline().strip() == "ready"
                res = _cli("attach", "--id", cid, "--pid", str(ct.pid), "--flags", FLAGS,
                           "--mountpoint", mnt, "--state-dir", state)  # fmt: skip
                assert res.returncode == 0, res.stderr
                in_ct = ["nsenter", "-t", str(ct.pid), "-m"]
                (meminfo,) = read_in(cg, "/proc/meminfo", prefix=in_ct)
                assert meminfo_kb(meminfo)["MemTotal"] == 65536
                old_dev = os.stat(mnt).st_dev

                os.kill(first.pid, signal.SIGKILL)
                first.proc.wait(30)
                dead = subprocess.run([*in_ct, "cat", "/proc/meminfo"], capture_output=True, text=True)
                assert dead.returncode != 0 and "Transport endpoint is not connected" in dead.stderr, dead

                with serve(mountpoint=mnt, state_dir=state, timeout=120):
                    live_dev = os.stat(mnt).st_dev
                    assert live_dev != old_dev
                    res = _cli("remount", "--all", "--json", "--mountpoint", mnt, "--state-dir", state)
                    assert res.returncode == 0, res.stdout + res.stderr
                    report = json.loads(res.stdout)
                    assert report["mode"] == "detach-move", report
                    ours = [ns for ns in report["namespaces"] if ns["id"] == cid]
                    assert len(ours) == 1 and ours[0]["action"] == "repaired", report
                    assert set(ours[0]["repaired"]) == targets, report

                    want = f"{os.major(live_dev)}:{os.minor(live_dev)}"
                    for target, stack in _mounts_at(ct.pid, targets).items():
                        assert len(stack) == 1, (target, stack)  # repaired in place, nothing stacked
                        dev, fstype, opts = stack[0]
                        assert (dev, fstype) == (want, config.FSTYPE), (target, stack)
                        assert {"ro", "nosuid", "nodev"} <= set(opts.split(",")), (target, opts)
                        assert os.stat(f"/proc/{ct.pid}/root{target}").st_dev == live_dev
                    (meminfo,) = read_in(cg, "/proc/meminfo", prefix=in_ct)
                    assert meminfo_kb(meminfo)["MemTotal"] == 65536

                    # A second run finds everything live and changes nothing.
                    again = json.loads(_cli("remount", "--all", "--json", "--mountpoint", mnt,
                                            "--state-dir", state).stdout)  # fmt: skip
                    assert [ns["action"] for ns in again["namespaces"] if ns["id"] == cid] == ["already_live"], again
            finally:
                stop(ct, signal.SIGKILL)
    finally:
        force_unmount(mnt)
        if not is_mounted(mnt):
            shutil.rmtree(work, ignore_errors=True)
