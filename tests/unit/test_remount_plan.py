"""The remount plan: what to do in each namespace, decided from discovery and the registry alone."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from lxcfs_guard.remount.discovery import parse_ours
from lxcfs_guard.remount.plan import (
    ATTACH,
    BENEATH,
    DETACH,
    UNCOVER,
    Mount,
    NsView,
    identity_problem,
    instance_prefix,
    plan,
    top_mounts,
)
from lxcfs_guard.remount.registry import Bind, Entry
from lxcfs_guard.remount.report import ALREADY_LIVE, GONE, REFUSED

DEAD, LIVE, OTHER = os.makedev(0, 39), os.makedev(0, 40), os.makedev(0, 77)
HOST_NS = 4026531841
FIXTURE = (Path(__file__).parent / "fixtures" / "remount" / "container_mountinfo.txt").read_bytes()
RO = 0x1 | 0x2 | 0x4  # MOUNT_ATTR_RDONLY | NOSUID | NODEV


def m(mid: int, parent: int, dev: int, target: str, options: str = "rw,nosuid,nodev,relatime") -> Mount:
    return Mount(mid, parent, dev, target, target, options)


def view(mntns: int, pid: int, *mounts: Mount) -> NsView:
    return NsView(mntns, pid, list(mounts))


def entry(cid: str, pid: int, mntns: int, *targets: str, flags: str = "", start: int = 1000) -> Entry:
    return Entry(cid, pid, start, mntns, [Bind(t.lstrip("/"), t, flags) for t in targets])


def test_top_mount_is_the_one_nothing_is_stacked_on() -> None:
    tops = top_mounts(parse_ours(FIXTURE, "fuse.lxcfs-guard"))
    assert tops["/proc/meminfo"].mount_id == 147  # 147 sits on 146
    assert tops["/proc/cpuinfo"].mount_id == 144
    # order in mountinfo does not matter
    assert top_mounts([m(2, 1, LIVE, "/x"), m(1, 9, DEAD, "/x")])["/x"].mount_id == 2


def test_discovered_namespace_with_stale_binds_gets_beneath_fixes_with_its_flags() -> None:
    ns = view(5001, 42, *parse_ours(FIXTURE, "fuse.lxcfs-guard"))
    jobs, done = plan({5001: ns}, [], {}, LIVE, {DEAD}, HOST_NS)
    assert done == []
    (job,) = jobs
    assert (job.id, job.pid, job.mntns, job.start_time) == ("mntns:5001", 42, 5001, None)
    fixes = {f.target: f for f in job.fixes}
    # meminfo is covered by a live mount: nothing to do there; the tunnel copy (306) is live too
    assert set(fixes) == {"/proc/cpuinfo", "/proc/diskstats", "/sys/devices/system/cpu/online", "/proc/with space"}
    assert all(f.how == BENEATH and f.expect_dev == DEAD for f in fixes.values())
    assert fixes["/proc/cpuinfo"].attrs == RO  # the stale bind was ro,nosuid,nodev: so is the new one
    assert fixes["/proc/with space"].attrs == 0x2 | 0x4 | 0x8
    assert fixes["/proc/cpuinfo"].source == "proc/cpuinfo"


def test_live_namespace_is_already_live_and_another_daemons_is_not_ours() -> None:
    live = view(5001, 42, m(1, 0, LIVE, "/proc/meminfo"))
    other = view(5002, 43, m(1, 0, OTHER, "/proc/meminfo"))
    jobs, done = plan({5001: live, 5002: other}, [], {}, LIVE, {DEAD}, HOST_NS)
    assert jobs == []
    assert [(r.id, r.action) for r in done] == [("mntns:5001", ALREADY_LIVE)]


def test_the_host_namespace_is_never_planned() -> None:
    jobs, done = plan({HOST_NS: view(HOST_NS, 1, m(1, 0, DEAD, "/proc/meminfo"))}, [], {}, LIVE, {DEAD}, HOST_NS)
    assert jobs == [] and done == []


def test_registered_container_gone_or_reused_is_gone() -> None:
    e = entry("c1", 42, 5001, "/proc/meminfo", start=1000)
    for ident, words in [((None, None), "exited"), ((2000, 5001), "reused"), ((1000, 6000), "mount namespace")]:
        jobs, done = plan({}, [e], {"c1": ident}, LIVE, {DEAD}, HOST_NS)
        assert jobs == [] and [(r.id, r.action) for r in done] == [("c1", GONE)]
        assert words in done[0].errors[0].message and done[0].errors[0].errno == errno.ESRCH
    assert identity_problem(e, 1000, 5001) is None


def test_registered_container_in_the_host_namespace_is_refused() -> None:
    e = entry("c1", 42, HOST_NS, "/proc/meminfo")
    jobs, done = plan({}, [e], {"c1": (1000, HOST_NS)}, LIVE, {DEAD}, HOST_NS)
    assert jobs == [] and done[0].action == REFUSED and done[0].errors[0].errno == errno.EPERM


def test_registered_binds_stale_missing_foreign_and_unregistered_stale() -> None:
    e = entry("c1", 42, 5001, "/proc/meminfo", "/proc/uptime", "/proc/stat", "/proc/swaps", flags="ro")
    ns = view(
        5001,
        42,
        m(1, 0, DEAD, "/proc/meminfo", "ro,nosuid,relatime"),  # stale: repaired beneath, its own flags
        m(2, 0, LIVE, "/proc/uptime"),  # live: nothing to do
        m(3, 0, OTHER, "/proc/swaps"),  # another daemon's: refused
        m(4, 0, DEAD, "/proc/loadavg"),
    )  # stale, not registered: repaired too
    jobs, done = plan({5001: ns}, [e], {"c1": (1000, 5001)}, LIVE, {DEAD}, HOST_NS)
    assert done == []  # the namespace is the registered container's, not also a discovered one
    (job,) = jobs
    assert (job.id, job.start_time) == ("c1", 1000)
    fixes = {f.target: (f.how, f.attrs) for f in job.fixes}
    assert fixes == {
        "/proc/meminfo": (BENEATH, 0x1 | 0x2),
        "/proc/stat": (ATTACH, 0x1),
        "/proc/loadavg": (BENEATH, 0x2 | 0x4),
    }
    assert [(r.target, r.errno) for r in job.refusals] == [("/proc/swaps", errno.EBUSY)]


def test_registered_container_all_live_is_already_live() -> None:
    e = entry("c1", 42, 5001, "/proc/meminfo")
    ns = view(5001, 42, m(1, 0, LIVE, "/proc/meminfo"))
    jobs, done = plan({5001: ns}, [e], {"c1": (1000, 5001)}, LIVE, {DEAD}, HOST_NS)
    assert jobs == [] and [(r.id, r.action) for r in done] == [("c1", ALREADY_LIVE)]


def test_registered_container_only_on_another_daemon_is_refused() -> None:
    e = entry("c1", 42, 5001, "/proc/meminfo")
    ns = view(5001, 42, m(1, 0, OTHER, "/proc/meminfo"))
    jobs, done = plan({5001: ns}, [e], {"c1": (1000, 5001)}, LIVE, {DEAD}, HOST_NS)
    assert jobs == [] and done[0].action == REFUSED and done[0].errors[0].target == "/proc/meminfo"


def test_only_stale_devices_are_touched() -> None:
    ns = view(5001, 42, m(1, 0, DEAD, "/proc/meminfo"), m(2, 0, OTHER, "/proc/stat"))
    jobs, _ = plan({5001: ns}, [], {}, LIVE, set(), HOST_NS)
    assert jobs == []  # no stale device named or found dead: nothing is ours to repair
    jobs, _ = plan({5001: ns}, [], {}, LIVE, {OTHER}, HOST_NS)  # a reload names the old daemon's device
    assert [f.target for f in jobs[0].fixes] == ["/proc/stat"]


def test_a_stale_mount_right_on_a_live_one_is_just_detached() -> None:
    from lxcfs_guard.remount.plan import UNCOVER

    # e.g. a run killed between its BENEATH and its detach, or an nsenter script that stacked binds
    ns = view(
        5001,
        42,
        m(10, 1, LIVE, "/proc/meminfo"),
        m(11, 10, DEAD, "/proc/meminfo"),
        m(20, 1, OTHER, "/proc/stat"),
        m(21, 20, DEAD, "/proc/stat"),
    )
    jobs, _ = plan({5001: ns}, [], {}, LIVE, {DEAD}, HOST_NS)
    assert {f.target: f.how for f in jobs[0].fixes} == {"/proc/meminfo": UNCOVER, "/proc/stat": BENEATH}


def test_directory_binds_get_the_same_fix_as_file_binds_with_their_own_root_as_source() -> None:
    whole = Mount(10, 1, DEAD, "/", "/var/lib/lxcfs", "rw,nosuid")
    proc = Mount(11, 1, DEAD, "/proc", "/lxcfs-proc", "ro,nosuid")
    jobs, _ = plan({7: view(7, 70, whole, proc)}, [], {}, LIVE, {DEAD}, HOST_NS)
    assert [(f.source, f.target, f.how) for f in jobs[0].fixes] == [
        ("", "/var/lib/lxcfs", BENEATH),
        ("proc", "/lxcfs-proc", BENEATH),
    ]


def test_copies_of_instance_mounts_are_detached_and_of_the_mountpoint_repaired() -> None:
    prefix = instance_prefix("/run/lxcfs-guard")
    inst = Mount(10, 1, DEAD, "/", "/run/lxcfs-guard/instances/18c-ab/mnt", "rw")
    host = Mount(11, 1, DEAD, "/", "/var/lib/lxcfs", "rw")
    jobs, _ = plan({7: view(7, 70, inst, host)}, [], {}, LIVE, {DEAD}, HOST_NS, prefix)
    assert {f.target: f.how for f in jobs[0].fixes} == {inst.target: DETACH, host.target: BENEATH}
    assert prefix == os.path.realpath("/run/lxcfs-guard") + "/instances/"


def test_a_stale_directory_bind_with_mounts_inside_is_refused_not_detached() -> None:
    inside = Mount(10, 1, DEAD, "/", "/var/lib/lxcfs", "rw", submounts=True)
    jobs, done = plan({7: view(7, 70, inside)}, [], {}, LIVE, {DEAD}, HOST_NS)
    assert jobs == [] and done[0].action == REFUSED and done[0].errors[0].errno == errno.EBUSY


def test_a_live_mount_right_on_a_live_one_is_uncovered() -> None:
    under, top = m(1, 9, LIVE, "/proc/meminfo"), m(2, 1, LIVE, "/proc/meminfo")
    jobs, _ = plan({7: view(7, 70, under, top)}, [], {}, LIVE, set(), HOST_NS)
    assert [(f.target, f.how, f.expect_dev) for f in jobs[0].fixes] == [("/proc/meminfo", UNCOVER, LIVE)]
    jobs, done = plan({7: view(7, 70, under)}, [], {}, LIVE, set(), HOST_NS)
    assert jobs == [] and done[0].action == ALREADY_LIVE


def test_parse_ours_sees_submounts_of_any_type() -> None:
    data = (
        b"30 1 0:40 / /var/lib/lxcfs rw - fuse.lxcfs-guard lxcfs-guard rw\n"
        b"31 30 0:50 / /var/lib/lxcfs/proc rw - tmpfs tmpfs rw\n"
        b"32 1 0:40 /proc/meminfo /proc/meminfo rw - fuse.lxcfs-guard lxcfs-guard rw\n"
    )
    got = {mnt.target: mnt.submounts for mnt in parse_ours(data, "fuse.lxcfs-guard")}
    assert got == {"/var/lib/lxcfs": True, "/proc/meminfo": False}
