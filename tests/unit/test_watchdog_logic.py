"""Pure parts of the watchdog: restart policy, status-line/-report formatting, mount-table reading,
proc-connector message filtering, command templates. No kernel objects needed here; the loop itself is
tested for real in tests/integration/test_watchdog_*.py."""

from __future__ import annotations

import os

import pytest

from lxcfs_guard.kernel.procfs import parse_mountinfo
from lxcfs_guard.watchdog import fusectl, policy, status
from lxcfs_guard.watchdog.instance import render_command
from lxcfs_guard.watchdog.procevents import exited_tgids


def test_backoff_is_zero_after_a_healthy_instance_and_doubles_while_starts_fail():
    b = policy.Backoff(initial=0.1, maximum=1.0)
    assert b.next_delay() == 0.0
    delays = []
    for _ in range(6):
        b.failed_before_ready()
        delays.append(b.next_delay())
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.became_ready()
    assert b.next_delay() == 0.0


def test_crash_loop_counts_restarts_in_a_sliding_window():
    c = policy.CrashLoop(limit=3, window=10.0)
    for t in (0.0, 1.0, 2.0):
        c.record(t)
    assert not c.exceeded(2.0)
    c.record(3.0)
    assert c.exceeded(3.0)
    assert not c.exceeded(10.5)  # the first one left the window
    unlimited = policy.CrashLoop(limit=0, window=10.0)
    for t in range(100):
        unlimited.record(float(t) / 100)
    assert not unlimited.exceeded(1.0)


def test_watchdog_pinger_rate():
    p = policy.WatchdogPinger(interval=5.0)
    assert p.due(0.0)
    p.sent(0.0)
    assert not p.due(4.9)
    assert p.due(5.0)


def test_status_line():
    assert (
        policy.status_line(123, 9, 10, 2, 41.6)
        == "serve pid 123, containers 9/10 healthy, restarts 2, last recovery 42 ms"
    )
    assert (
        policy.status_line(None, 0, 0, 0, None)
        == "serve pid none, containers 0/0 healthy, restarts 0, last recovery n/a"
    )


MOUNTS = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:42 / /var/lib/lxcfs rw,nosuid,nodev,relatime shared:20 - fuse.lxcfs-guard lxcfs-guard rw,user_id=0
50 40 0:45 / /var/lib/lxcfs rw,nosuid,nodev,relatime shared:21 - fuse.lxcfs-guard lxcfs-guard rw,user_id=0
60 22 0:50 /proc/meminfo /proc/meminfo ro,nosuid,nodev - fuse.lxcfs-guard lxcfs-guard rw
"""


def test_top_mount_is_the_one_nothing_at_that_path_is_mounted_on():
    mounts = parse_mountinfo(MOUNTS)
    assert status.top_mount_dev(mounts, "/var/lib/lxcfs", "fuse.lxcfs-guard") == os.makedev(0, 45)
    assert status.top_mount_dev(mounts, "/nowhere", "fuse.lxcfs-guard") is None
    assert status.top_mount_dev(mounts, "/var/lib/lxcfs", "fuse.lxcfs") is None


def test_top_mount_after_move_mount_beneath():
    # BENEATH: the new mount (id 70) is listed last but sits under the old top (id 50), which is now its child.
    text = MOUNTS.replace("50 40 0:45", "50 70 0:45") + (
        "70 40 0:47 / /var/lib/lxcfs rw,nosuid,nodev - fuse.lxcfs-guard lxcfs-guard rw\n"
    )
    assert status.top_mount_dev(parse_mountinfo(text), "/var/lib/lxcfs", "fuse.lxcfs-guard") == os.makedev(0, 45)


def test_bind_state():
    mounts = parse_mountinfo(MOUNTS)
    binds = [m for m in mounts if m.mount_point == "/proc/meminfo"]
    assert status.bind_state(binds, "fuse.lxcfs-guard", os.makedev(0, 50)) == "live"
    assert status.bind_state(binds, "fuse.lxcfs-guard", os.makedev(0, 45)) == "stale"
    assert status.bind_state(binds, "fuse.lxcfs-guard", None) == "stale"
    assert status.bind_state(binds, "fuse.lxcfs", os.makedev(0, 50)) == "unbound"


def test_status_text_lists_containers():
    text = status.format_text(
        {
            "mode": "supervise",
            "supervisor_pid": 10,
            "daemon_pid": 11,
            "mountpoint": "/var/lib/lxcfs",
            "healthy": True,
            "restarts": 3,
            "last_recovery_ms": 12.34,
            "containers": [{"id": "web-1", "pid": 400, "state": "live"}, {"id": "db", "pid": 401, "state": "stale"}],
        }
    )
    assert "daemon_pid:       11" in text and "healthy:          yes" in text and "last_recovery_ms: 12.3" in text
    assert text.splitlines()[-2].split() == ["web-1", "400", "live"]
    assert text.splitlines()[-1].split() == ["db", "401", "stale"]


def test_status_file_roundtrip(tmp_path):
    status.write_status(str(tmp_path), {"daemon_pid": 5, "healthy": True})
    assert status.read_status(str(tmp_path)) == {"daemon_pid": 5, "healthy": True}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp file left
    (tmp_path / "status.json").write_text("{broken")
    assert status.read_status(str(tmp_path)) is None


def test_exited_tgids_ignores_threads_and_other_events():
    msgs = [
        {"event": "PROC_EVENT_EXIT", "process_pid": 10, "process_tgid": 10},
        {"event": "PROC_EVENT_EXIT", "process_pid": 11, "process_tgid": 10},  # a thread of 10
        {"event": "PROC_EVENT_FORK", "child_pid": 12, "child_tgid": 12},
        {"event": "PROC_EVENT_EXIT", "process_pid": 13, "process_tgid": 13},
    ]
    assert exited_tgids(msgs) == [10, 13]


@pytest.mark.parametrize(
    ("major", "minor", "name"), [(0, 42, "42"), (0, 300, "300"), (0, 1 << 19, str(1 << 19)), (8, 1, str((8 << 20) | 1))]
)
def test_fusectl_connection_name_is_the_kernel_dev_t(major, minor, name):
    assert fusectl.connection_name(os.makedev(major, minor)) == name


def test_render_command_fills_every_word():
    argv = render_command("lxcfs -f -p '{instance_dir}/lxcfs pid' {mountpoint}", "/m nt", "/s", "/s/i")
    assert argv == ["lxcfs", "-f", "-p", "/s/i/lxcfs pid", "/m nt"]


def test_probe_fits_inside_systemds_watchdog():
    assert policy.fit_probe_to_watchdog(1.0, 2.0, 10.0) == (1.0, 2.0)  # the shipped unit: already fits
    interval, timeout = policy.fit_probe_to_watchdog(1.0, 2.0, 3.0)
    assert interval + timeout == pytest.approx(1.0) and timeout == pytest.approx(2 * interval)


def test_status_reads_the_serving_daemons_workers_from_its_state_file(tmp_path):
    (tmp_path / "serve").mkdir()
    me = os.getpid()
    rec = {
        "pid": 4242,
        "workers": [
            {"slot": 0, "pid": me, "started": 1.0, "restarts": 2},
            {"slot": 1, "pid": 2**22 + 7, "started": 1.0, "restarts": 0},
        ],
        "worker_restarts": 2,
    }
    (tmp_path / "serve" / "4242.json").write_text(__import__("json").dumps(rec))
    got = status.serve_workers(str(tmp_path), 4242)
    assert [w["pid"] for w in got["workers"]] == [me]  # a worker that is gone is not listed
    assert got["worker_restarts"] == 2
    assert status.serve_workers(str(tmp_path), 99) == {} and status.serve_workers(str(tmp_path), None) == {}
    text = status.format_text({"mode": "serve", "daemon_pid": 4242, **got, "containers": []})
    assert f"1 worker (pids {me}), 2 restarted" in text
