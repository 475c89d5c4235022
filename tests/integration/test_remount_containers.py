"""The remount engine end to end on light containers (own mount namespace, own memory cgroup, own root)
served by a real `lxcfs-guard serve`: SIGKILL the daemon, see ENOTCONN inside, start it again, repair."""

from __future__ import annotations

import errno
import json
import time
import uuid

from lxcfs_guard.kernel import procfs
from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.testing.containers import LoopingReader, light_containers, tunnel
from tests.integration.remount_helpers import actions, assert_exit_code, cli, daemon, our_mounts, remount_json

RO = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV


def test_twenty_containers_attached_and_discovered_all_recover_and_a_second_run_changes_nothing() -> None:
    tag = uuid.uuid4().hex[:8]
    with (
        daemon() as d,
        light_containers(10, memory_mib=[64 + 8 * i for i in range(10)], bind_from=d.mountpoint, flags=RO) as found,
        light_containers(10, memory_mib=[200 + 8 * i for i in range(10)]) as bare,
    ):
        ids = {}
        for i, c in enumerate(bare):
            ids[c.pid] = f"att-{tag}-{i}"
            proc = cli(d, "attach", "--id", ids[c.pid], "--pid", str(c.pid))
            assert proc.returncode == 0, proc.stderr
        everyone = found + bare
        pids = {c.pid for c in everyone}
        for c in everyone:
            assert c.memtotal_kb() == c.limit // 1024
        before = {c.pid: [(t, opts) for t, _, opts in our_mounts(c, d.fstype)] for c in everyone}
        assert all(len(before[c.pid]) == 7 for c in found) and all(len(before[c.pid]) == 8 for c in bare)
        assert all(opts.startswith("ro,") for c in found for _, opts in before[c.pid])
        listed = json.loads(cli(d, "list", "--json").stdout)["containers"]
        assert {r["pid"]: r["state"] for r in listed if r["pid"] in pids} == {p: "live" for p in pids}

        d.kill()
        for c in everyone:
            assert c.read("/proc/meminfo")[0] == errno.ENOTCONN
        d.start()
        listed = json.loads(cli(d, "list", "--json").stdout)["containers"]
        assert {r["pid"]: r["state"] for r in listed if r["pid"] in pids} == {p: "dead" for p in pids}

        rc, report = remount_json(d, "--all")
        assert_exit_code(rc, report, pids)
        assert actions(report, pids) == {p: "repaired" for p in pids}
        by_pid = {ns["pid"]: ns for ns in report["namespaces"]}
        assert all(by_pid[p]["id"] == ids[p] for p in ids)  # attached: reported under their registry id
        assert all(by_pid[c.pid]["id"].startswith("mntns:") for c in found)  # found by discovery
        live = f"{d.dev >> 8}:{d.dev & 0xFF}"
        for c in everyone:
            assert c.memtotal_kb() == c.limit // 1024
            now = our_mounts(c, d.fstype)
            assert [(t, opts) for t, _, opts in now] == before[c.pid]  # same count, same flags (ro stays ro)
            assert {dev for _, dev, _ in now} == {live}
        after = {c.pid: c.mounts_of(d.fstype) for c in everyone}

        rc, report = remount_json(d, "--all")
        assert_exit_code(rc, report, pids)
        assert actions(report, pids) == {p: "already_live" for p in pids}
        assert {c.pid: c.mounts_of(d.fstype) for c in everyone} == after  # not one mount changed


def test_ro_bind_stays_ro_and_an_unrelated_stale_device_touches_nothing() -> None:
    with daemon() as d, light_containers(1, bind_from=d.mountpoint, files=("proc/meminfo",), flags=RO) as (c,):
        d.kill()
        d.start()
        rc, report = remount_json(d, "--all", "--stale-dev", f"{0}:{0}")  # an unrelated device: nothing done
        assert c.pid not in actions(report)
        rc, report = remount_json(d, "--all")
        assert_exit_code(rc, report, {c.pid})
        assert actions(report, {c.pid}) == {c.pid: "repaired"}
        ((_, _, opts),) = our_mounts(c, d.fstype)
        assert opts.split(",")[:3] == ["ro", "nosuid", "nodev"]
        assert c.memtotal_kb() == c.limit // 1024


def test_looping_reader_sees_enotconn_then_its_own_values_never_the_hosts_nor_enoent() -> None:
    with daemon() as d, light_containers(3, bind_from=d.mountpoint) as cs:
        reader = LoopingReader(cs[1])
        try:
            time.sleep(0.3)
            old = d.dev
            d.kill()
            time.sleep(0.3)
            d.start()
            rc, report = remount_json(d, "--all", "--stale-dev", f"{old >> 8}:{old & 0xFF}")
            time.sleep(0.3)
        finally:
            runs = reader.stop()
        assert rc == 0 and actions(report, {c.pid for c in cs}) == {c.pid: "repaired" for c in cs}
        # The read in flight when the daemon is killed fails with ECONNABORTED, every later one with ENOTCONN.
        kinds = [{"ECONNABORTED": "dead", "ENOTCONN": "dead"}.get(k, k) for k, _ in runs]
        kinds = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
        assert kinds == ["own", "dead", "own"], runs
        assert sum(n for _, n in runs) > 300, runs  # it really was reading all along


def test_dry_run_touches_nothing() -> None:
    with daemon() as d, light_containers(2, bind_from=d.mountpoint) as cs:
        d.kill()
        d.start()
        before = {c.pid: c.mounts_of(d.fstype) for c in cs}
        rc, report = remount_json(d, "--all", "--dry-run")
        assert report["dry_run"] and actions(report, set(before)) == {p: "repaired" for p in before}
        assert {c.pid: c.mounts_of(d.fstype) for c in cs} == before
        assert all(c.read("/proc/meminfo")[0] == errno.ENOTCONN for c in cs)
        text = cli(d, "remount", "--all").stdout
        assert text.count("repaired") >= 2 and "via beneath" in text


def test_register_a_hand_made_container_then_remount_it_by_id_and_unregister() -> None:
    cid = f"reg-{uuid.uuid4().hex[:8]}"
    with daemon() as d, light_containers(1, bind_from=d.mountpoint, flags=RO) as (c,):
        proc = cli(d, "register", "--id", cid, "--pid", str(c.pid), "--json")
        assert proc.returncode == 0, proc.stderr
        entry = json.loads(proc.stdout)
        assert entry["pid"] == c.pid and entry["mntns"] == c.mntns
        assert sorted(b["target"] for b in entry["binds"]) == sorted(t for t, _, _ in our_mounts(c, d.fstype))
        assert {b["flags"] for b in entry["binds"]} == {"ro,nosuid,nodev"}
        (row,) = [r for r in json.loads(cli(d, "list", "--json").stdout)["containers"] if r["pid"] == c.pid]
        assert row["id"] == cid and row["registered"] and row["state"] == "live" and row["binds"] == 7
        d.kill()
        d.start()
        rc, report = remount_json(d, "--id", cid)
        assert rc == 0 and [(ns["id"], ns["action"]) for ns in report["namespaces"]] == [(cid, "repaired")]
        assert c.memtotal_kb() == c.limit // 1024
        assert cli(d, "unregister", "--id", cid).returncode == 0
        assert cli(d, "unregister", "--id", cid).returncode == 1  # already gone: says so
        rc, report = remount_json(d, "--id", cid)
        assert rc == 1 and report["namespaces"][0]["errors"][0]["errname"] == "ENOENT"


def test_clones_of_a_shared_live_mount_are_private() -> None:
    """On a systemd host every mount is shared, and so would be a clone of one: it would join the host
    mount's peer group, and detaching one container's stale mount would propagate into the others'. Here
    the daemon is mounted under a shared tunnel (so its mount is shared); the repaired binds must carry no
    propagation tag at all, and many containers repaired at once must all succeed."""
    with tunnel() as top, daemon(parent=top) as d, light_containers(12, bind_from=d.mountpoint) as cs:
        assert any(
            m.mount_point == d.mountpoint and any(o.startswith("shared:") for o in m.optional)
            for m in procfs.read_mountinfo()
        )
        pids = {c.pid for c in cs}
        old = d.dev
        d.kill()
        d.start()
        rc, report = remount_json(d, "--all", "--stale-dev", f"{old >> 8}:{old & 0xFF}")
        assert rc == 0 and actions(report, pids) == {p: "repaired" for p in pids}, report
        for c in cs:
            lines = c.mounts_of(d.fstype)
            assert len(lines) == 7 and not any("shared:" in x or "master:" in x for x in lines), lines
            assert c.memtotal_kb() == c.limit // 1024
