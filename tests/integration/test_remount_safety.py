"""What the remount engine must refuse or survive: a reused pid, a target the container replaced with a
symlink or a directory, a corrupt registry, the host's own namespace."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import uuid
from pathlib import Path

from lxcfs_guard.kernel import procfs
from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.remount import engine
from lxcfs_guard.remount.registry import Entry, Registry
from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.containers import MiB, light_containers, start, stop
from tests.integration.remount_helpers import actions, assert_exit_code, daemon, our_mounts, remount_json


def _host_mount_points() -> set[str]:
    """Mount points in the host's (our) namespace; other test runs mount things too, so tests look for
    specific paths rather than comparing the whole table."""
    return {m.mount_point for m in procfs.read_mountinfo()}


def test_reused_pid_is_reported_gone_and_gets_no_mount() -> None:
    with daemon() as d, light_containers(1, bind_from=d.mountpoint) as (old,), make_cgroup(memory=96 * MiB) as cg:
        Registry(d.state_dir).add_container("reused", old.pid, [("proc/meminfo", "/proc/meminfo")])
        pid = old.pid
        stop(old)  # the container is gone; its pid is free
        d.kill()
        d.start()
        new = None
        try:
            for _ in range(50):  # the kernel hands out pid again, unless another process forks in between
                new = start(cg, 96 * MiB, want_pid=pid)
                if new.pid == pid:
                    break
                stop(new)
                new = None
            assert new is not None, f"could not get pid {pid} again"
            before = new.mountinfo()
            rc, report = remount_json(d, "--id", "reused")
            (ns,) = report["namespaces"]
            assert ns["action"] == "gone" and ns["pid"] == pid and "reused" in ns["errors"][0]["message"], ns
            assert rc == 0  # nothing left broken: the container is simply not there any more
            assert new.mountinfo() == before  # the process that has the pid now got nothing
            assert "reused" not in Registry(d.state_dir).load()  # and the stale entry is forgotten
        finally:
            if new is not None:
                stop(new)


def test_symlinked_and_directory_targets_are_refused_and_nothing_is_mounted_elsewhere() -> None:
    with daemon() as d, light_containers(1) as (c,):
        for name in ("a", "b", "c", "d"):
            open(f"{c.root}/tmp/{name}", "w").close()
        binds = [
            ("proc/meminfo", "/tmp/a"),
            ("proc/uptime", "/tmp/b"),
            ("proc/stat", "/tmp/c"),
            ("proc/loadavg", "/tmp/d"),
        ]
        engine.attach(c.pid, d.mountpoint, binds)
        Registry(d.state_dir).add_container("victim", c.pid, binds)
        assert [t for t, _, _ in our_mounts(c, d.fstype)] == ["/tmp/a", "/tmp/b", "/tmp/c", "/tmp/d"]
        d.kill()

        def replace() -> None:  # inside the container: drop three dead binds, put a symlink and a dir there
            for name in ("a", "b", "d"):
                sc.umount2(f"/tmp/{name}", sc.MNT_DETACH)
            for name in ("a", "b"):
                os.unlink(f"/tmp/{name}")
            os.symlink("/etc/hostname", "/tmp/a")  # absolute: walked from the host, it would be the host's
            os.mkdir("/tmp/b")

        c.call(replace)
        d.start()
        rc, report = remount_json(d, "--all")
        assert rc == 1 and not report["ok"]
        (ns,) = [ns for ns in report["namespaces"] if ns["pid"] == c.pid]
        assert ns["id"] == "victim" and ns["action"] == "refused"
        assert sorted((e["target"], e["errname"]) for e in ns["errors"]) == [("/tmp/a", "ELOOP"), ("/tmp/b", "EISDIR")]
        # The rest is repaired: /tmp/c in place, and /tmp/d, a plain file again, bound anew (the registry's intent).
        assert sorted(ns["repaired"]) == ["/tmp/c", "/tmp/d"]
        assert [t for t, _, _ in our_mounts(c, d.fstype)] == ["/tmp/c", "/tmp/d"]
        assert not any("/etc/hostname" in line for line in c.mountinfo())
        assert "/etc/hostname" not in _host_mount_points()
        assert os.path.islink(f"{c.root}/tmp/a") and os.path.isdir(f"{c.root}/tmp/b")


def test_corrupt_registry_is_set_aside_with_a_message_and_discovery_still_repairs() -> None:
    with daemon() as d, light_containers(2, bind_from=d.mountpoint) as cs:
        with open(f"{d.state_dir}/registry.json", "w") as f:
            f.write('{"schema": 1, "containers": {"x": ')
        d.kill()
        d.start()
        rc, report = remount_json(d, "--all")
        assert_exit_code(rc, report, {c.pid for c in cs})
        assert actions(report, {c.pid for c in cs}) == {c.pid: "repaired" for c in cs}
        (warning,) = [w for w in report["warnings"] if "registry" in w]
        assert "corrupt" in warning and "moved to" in warning and "discovery only" in warning
        (aside,) = glob.glob(f"{d.state_dir}/registry.json.corrupt-*")
        assert Path(aside).read_text().startswith('{"schema": 1')
        assert all(c.memtotal_kb() == c.limit // 1024 for c in cs)


def test_the_host_namespace_is_never_entered() -> None:
    with daemon() as d:
        me = os.getpid()
        entry = Entry(
            f"host-{uuid.uuid4().hex[:6]}",
            me,
            procfs.pid_start_time(me),
            procfs.ns_inode(me),
            [("proc/meminfo", "/proc/meminfo")],
        )
        Registry(d.state_dir).add(entry)  # written by hand: add_container() itself refuses this
        assert "/proc/meminfo" not in _host_mount_points()
        rc, report = remount_json(d, "--id", entry.id)
        (ns,) = report["namespaces"]
        assert rc == 1 and ns["action"] == "refused" and ns["errors"][0]["errname"] == "EPERM"
        assert "/proc/meminfo" not in _host_mount_points()
        with contextlib.suppress(OSError):
            Registry(d.state_dir).remove(entry.id)


def test_attach_refuses_a_symlinked_target_and_a_pid_in_our_namespace() -> None:
    with daemon() as d, light_containers(1) as (c,):
        os.symlink("/etc/hostname", f"{c.root}/tmp/link")
        try:
            engine.attach(c.pid, d.mountpoint, [("proc/meminfo", "/tmp/link")])
            raise AssertionError("attach followed a symlink")
        except engine.AttachError as e:
            assert e.errno == errno.ELOOP and e.report.action == "refused"
        assert our_mounts(c, d.fstype) == []
        try:
            engine.attach(os.getpid(), d.mountpoint, [("proc/meminfo", "/proc/meminfo")])
            raise AssertionError("attach entered our own namespace")
        except OSError as e:
            assert e.errno == errno.EPERM
