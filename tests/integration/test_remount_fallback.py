"""The paths kernels before 6.5 take (no MOVE_MOUNT_BENEATH: detach the stale mount, then move the clone
in), forced here on 6.18 so they are exercised, plus swap_mount (the host side of a restart) both ways and
the stock LXCFS guarded through --fstype."""

from __future__ import annotations

import errno
import os

import pytest

from lxcfs_guard.kernel import procfs
from lxcfs_guard.remount import live
from lxcfs_guard.testing.containers import light_containers
from lxcfs_guard.testing.procs import force_unmount, wait_for
from tests.integration.remount_helpers import actions, assert_exit_code, daemon, our_mounts, remount_json


@pytest.mark.parametrize("how", ["flag", "env"])
def test_detach_then_move_repairs_without_stacking(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with daemon() as d, light_containers(4, bind_from=d.mountpoint) as cs:
        pids = {c.pid for c in cs}
        before = {c.pid: [(t, o) for t, _, o in our_mounts(c, d.fstype)] for c in cs}
        d.kill()
        d.start()
        if how == "env":
            monkeypatch.setenv(live.ENV_NO_BENEATH, "1")  # inherited by the CLI below
            rc, report = remount_json(d, "--all")
        else:
            rc, report = remount_json(d, "--all", "--no-beneath")
        assert report["mode"] == "detach-move"
        assert_exit_code(rc, report, pids)
        assert actions(report, pids) == {p: "repaired" for p in pids}
        for c in cs:
            assert [(t, o) for t, _, o in our_mounts(c, d.fstype)] == before[c.pid]
            assert c.memtotal_kb() == c.limit // 1024
        rc, report = remount_json(d, "--all", "--no-beneath")
        assert actions(report, pids) == {p: "already_live" for p in pids}


@pytest.mark.parametrize("beneath", [True, False])
def test_swap_mount_replaces_a_dead_host_mount_in_place(beneath: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not beneath:
        monkeypatch.setenv(live.ENV_NO_BENEATH, "1")
    with daemon() as old, daemon() as new:
        os.kill(old.pid, 9)  # dies, and its dead mount stays on the host mountpoint
        wait_for(lambda: _dead(old.mountpoint), 5, 0.01, "the old mount to be dead")
        live.swap_mount(new.mountpoint, old.mountpoint)
        (m,) = procfs.mounts_at(old.mountpoint)  # exactly one mount there: the dead one is gone, nothing stacked
        assert m.dev == new.dev
        with open(os.path.join(old.mountpoint, "proc/meminfo")) as f:
            assert f.readline().startswith("MemTotal:")
        assert len(procfs.mounts_at(new.mountpoint)) == 1  # the standby's own mount is left to its owner
        live.swap_mount(new.mountpoint, old.mountpoint)  # again: still exactly one
        assert [m.dev for m in procfs.mounts_at(old.mountpoint)] == [new.dev]


def test_swap_mount_onto_an_empty_directory_attaches(tmp_path) -> None:
    with daemon() as d:
        target = tmp_path / "mnt"
        target.mkdir()
        try:
            live.swap_mount(d.mountpoint, str(target))
            assert [m.dev for m in procfs.mounts_at(str(target))] == [d.dev]
        finally:
            force_unmount(str(target))


def _dead(path: str) -> bool:
    try:
        os.stat(os.path.join(path, "proc"))
    except OSError as e:
        return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def test_stock_lxcfs_is_guarded_through_fstype() -> None:
    """Debian's LXCFS 5.0.3: SIGKILL, restart, `remount --all --fstype fuse.lxcfs`. LXCFS records no
    device of its own: the run after its start (ExecStartPost) records it, as the live device it clones
    from, so the run after the next crash knows the dead one is ours."""
    with daemon(lxcfs=True) as d, light_containers(3, bind_from=d.mountpoint) as cs:
        pids = {c.pid for c in cs}
        assert all(c.memtotal_kb() == c.limit // 1024 for c in cs)
        assert remount_json(d, "--all")[0] == 0
        d.kill()
        assert all(c.read("/proc/meminfo")[0] == errno.ENOTCONN for c in cs)
        d.start()
        rc, report = remount_json(d, "--all")
        assert report["fstype"] == "fuse.lxcfs"
        assert_exit_code(rc, report, pids)
        assert actions(report, pids) == {p: "repaired" for p in pids}
        assert all(c.memtotal_kb() == c.limit // 1024 for c in cs)
        assert all(len(our_mounts(c, "fuse.lxcfs")) == 7 for c in cs)
