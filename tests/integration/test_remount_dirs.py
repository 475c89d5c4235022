"""Directory binds of our filesystem (issue 10.1): LXC's "nesting" bind of the whole mount, a bind of
`proc` or of `sys/devices/system/cpu`, and the copies of the host mountpoint (and of a supervisor's
instance mounts) that every namespace copied from the host's holds (`unshare -m`, sandboxes, services with
PrivateMounts). After the daemon comes back they are repaired like file binds (instance copies are
detached), `remount --all` exits 0, and a second run exits 0 and changes nothing."""

from __future__ import annotations

import collections
import errno
import json
import os
import signal
import time

from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.containers import LightContainer
from lxcfs_guard.testing.procs import wait_for
from lxcfs_guard.testing.supervise import supervised
from tests.integration.remount_helpers import daemon, pivot_container, plain_namespaces, remount_json

MiB = 1 << 20


def _ours(c: LightContainer, fstype: str, under: str = "/") -> list[tuple[str, str]]:
    """(target, device) of every mount of `fstype` in the container's namespace at or under `under` (a
    namespace copied from the host's also holds copies of other test runs' mounts, which come and go)."""
    out = ((f[4], f[2]) for f in (line.split() for line in c.mounts_of(fstype)))
    return sorted((t, dev) for t, dev in out if under == "/" or t == under or t.startswith(under + "/"))


def _stacked(mounts: list[tuple[str, str]]) -> list[str]:
    return [t for t, n in collections.Counter(t for t, _ in mounts).items() if n > 1]


def _ns_report(report: dict, pids: set[int]) -> dict[int, dict]:
    return {ns["pid"]: ns for ns in report["namespaces"] if ns["pid"] in pids}


def _reads(c: LightContainer, path: str) -> int:
    err, text = c.read(path)
    assert err == 0, (path, os.strerror(err))
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("MemTotal:"))


def test_whole_mount_proc_and_cpu_directory_binds_and_plain_unshare_copies_are_repaired() -> None:
    with daemon() as d, make_cgroup(memory=80 * MiB) as cg, make_cgroup(memory=96 * MiB) as plain_cg:
        m = d.mountpoint
        binds = [
            (m, "/var/lib/lxcfs"),
            (m + "/proc", "/lxcfs-proc"),
            (m + "/sys/devices/system/cpu", "/lxcfs-cpu"),
            (m + "/proc/meminfo", "/proc/meminfo"),
            (m + "/proc/uptime", "/proc/uptime"),
        ]
        with pivot_container(cg, 80 * MiB, binds) as p, plain_namespaces(20, plain_cg, 96 * MiB) as plain:
            everyone = [p, *plain]
            pids = {c.pid for c in everyone}
            paths = {p.pid: ["/var/lib/lxcfs/proc/meminfo", "/lxcfs-proc/meminfo", "/proc/meminfo"]}
            paths |= {c.pid: [m + "/proc/meminfo"] for c in plain}
            for c in everyone:
                assert all(_reads(c, path) * 1024 == c.limit for path in paths[c.pid])
            under = {p.pid: "/", **{c.pid: m for c in plain}}
            before = {c.pid: _ours(c, d.fstype, under[c.pid]) for c in everyone}
            assert len(before[p.pid]) == 5 and all(len(before[c.pid]) == 1 for c in plain)

            d.kill()
            assert all(c.read(paths[c.pid][0])[0] == errno.ENOTCONN for c in everyone)
            d.start()
            rc, report = remount_json(d, "--all")
            got = _ns_report(report, pids)
            assert {pid: ns["action"] for pid, ns in got.items()} == {pid: "repaired" for pid in pids}, report
            assert rc == 0 and report["ok"] and report["broken"] == [], report
            assert sorted(got[p.pid]["repaired"]) == sorted(t for _, t in binds), got[p.pid]
            for c in everyone:
                assert all(_reads(c, path) * 1024 == c.limit for path in paths[c.pid]), c.pid
                after = _ours(c, d.fstype, under[c.pid])
                assert len(after) == len(before[c.pid]) and not _stacked(after), (before[c.pid], after)
            err, online = p.read("/lxcfs-cpu/online")
            assert err == 0 and online.strip(), online

            # a second run: exit 0, nothing changed
            mounts = {c.pid: _ours(c, d.fstype, under[c.pid]) for c in everyone}
            rc, report = remount_json(d, "--all")
            assert rc == 0 and report["ok"], report
            assert {ns["action"] for ns in _ns_report(report, pids).values()} <= {"already_live"}, report
            assert {c.pid: _ours(c, d.fstype, under[c.pid]) for c in everyone} == mounts


def test_a_bind_whose_kind_changed_is_still_refused() -> None:
    """The stale mount's root names `proc`, which was a FILE on the old connection (a stub daemon plays
    it) and is a directory on the live one: not reinterpreted, refused with ENOTDIR, left as it was."""
    from tests.support import stub_fuse

    with daemon() as d, make_cgroup(memory=80 * MiB) as cg, pivot_container(cg, 80 * MiB, []) as p:
        os.mkdir(f"/proc/{p.pid}/root/tmp/stub")
        open(f"/proc/{p.pid}/root/tmp/x", "w").close()
        with stub_fuse.running(tree="proc:f") as (top, dev):
            stub_fuse.give(p, top, "/tmp/stub", bind=("proc", "/tmp/x"), keep=False)
            before = _ours(p, d.fstype)
            rc, report = remount_json(d, "--all", "--stale-dev", f"{os.major(dev)}:{os.minor(dev)}")
            ns = _ns_report(report, {p.pid})[p.pid]
            assert ns["action"] == "refused" and rc == 1, report
            assert [(e["target"], e["errname"]) for e in ns["errors"]] == [("/tmp/x", "ENOTDIR")], ns
            assert [(b["target"], b["errname"]) for b in report["broken"]] == [("/tmp/x", "ENOTDIR")], report
            assert _ours(p, d.fstype) == before


def test_under_supervise_copies_of_the_mountpoint_are_repaired_and_of_instance_mounts_detached() -> None:
    """A host with a supervisor and namespaces copied from the host's while it ran: each holds a copy of
    the published mountpoint and of the serving instance's private mount. After SIGKILL of serve the
    supervisor's repair leaves no dead mount of ours in any of them: the mountpoint copy is live again,
    the instance copy is gone; `remount --all` then exits 0 and changes nothing."""
    with supervised() as g, make_cgroup(memory=96 * MiB) as cg, plain_namespaces(5, cg, 96 * MiB) as plain:
        fstype = "fuse.lxcfs-guard"
        old_pid, old_dev = g.daemon_pid(), os.stat(g.mountpoint).st_dev
        instances = os.path.realpath(g.state_dir) + "/instances/"
        top = os.path.dirname(g.mountpoint)  # the supervisor's mountpoint and state dir are both under it
        for c in plain:
            mounts = _ours(c, fstype, top)
            assert any(t == g.mountpoint for t, _ in mounts), mounts
            assert any(t.startswith(instances) for t, _ in mounts), mounts
        os.kill(old_pid, signal.SIGKILL)

        def recovered() -> bool:
            try:
                return g.daemon_pid() not in (None, old_pid) and os.stat(g.mountpoint).st_dev != old_dev
            except OSError:
                return False

        wait_for(recovered, 30, 0.05, "supervise to recover")
        time.sleep(0.5)  # the discovered pass runs right after the registered one
        old = f"{os.major(old_dev)}:{os.minor(old_dev)}"
        for c in plain:
            mounts = _ours(c, fstype, top)
            assert not any(dev == old for _, dev in mounts), mounts
            assert [t for t, _ in mounts].count(g.mountpoint) == 1, mounts
            assert _reads(c, g.mountpoint + "/proc/meminfo") * 1024 == c.limit
        mounts = {c.pid: _ours(c, fstype, top) for c in plain}
        for _ in range(2):
            proc = g.cli("remount", "--all", "--json")
            report = json.loads(proc.stdout)
            assert proc.returncode == 0 and report["ok"], report
            assert {ns["action"] for ns in _ns_report(report, {c.pid for c in plain}).values()} <= {"already_live"}
            assert {c.pid: _ours(c, fstype, top) for c in plain} == mounts
