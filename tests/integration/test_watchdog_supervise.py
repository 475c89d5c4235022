"""supervise's other duties, for real: the sd_notify protocol it speaks to a service manager, a flat
footprint over many restarts, guarding the stock C LXCFS, giving up on a crash loop, unregistering
containers that exit, and leaving nothing behind on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid

import pytest

from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.remount.registry import Registry
from lxcfs_guard.testing.procs import signal_daemon, wait_for
from lxcfs_guard.testing.readers import reader_fleet
from lxcfs_guard.testing.supervise import fusectl_restored, kill_and_time, supervised


@pytest.fixture(autouse=True)
def _fusectl_as_found():
    with fusectl_restored():
        yield


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_fds_and_memory_do_not_grow_over_50_restarts():
    with supervised("--max-restarts", "0") as s, reader_fleet(2, s.mountpoint, s.state_dir) as fleet:

        def kill_once() -> None:
            st = s.wait_healthy(standby=True)
            t = kill_and_time(st["daemon_pid"])
            fleet.wait_recovered(t, timeout=10, settle=0.0)
            s.wait_healthy(standby=True, not_pid=st["daemon_pid"])

        for _ in range(5):  # warm-up: imports, caches, the first engine forks
            kill_once()
        fds0, rss0 = _fds(s.proc.pid), _rss_kb(s.proc.pid)
        for _ in range(50):
            kill_once()
        fds1, rss1 = _fds(s.proc.pid), _rss_kb(s.proc.pid)
        assert s.status()["restarts"] == 55
        assert fds1 == fds0, f"supervise fds {fds0} -> {fds1}: {os.listdir(f'/proc/{s.proc.pid}/fd')}"
        assert rss1 - rss0 < 1024, f"supervise RSS {rss0} kB -> {rss1} kB over 50 restarts"
        assert fleet.wrong_reads() == {}
        # nothing piles up on disk or in the mount table either: one primary, one standby
        inst = os.listdir(os.path.join(s.state_dir, "instances"))
        assert len(inst) == 2, inst
        ours = [m for m in read_mountinfo() if m.mount_point.startswith(s.top)]
        assert len(ours) == 1 + 2 + 1, [m.mount_point for m in ours]  # host mountpoint, 2 instances, the private bind


def test_sd_notify_protocol():
    """READY=1 only once the mount answers; WATCHDOG=1 only while the probe passes; RELOADING=1/READY=1
    around a reload; STATUS= one line; STOPPING=1 on SIGTERM, which unmounts and exits 0."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"lxcfs-guard-test-{uuid.uuid4().hex[:8]}"
    sock.bind("\0" + address)
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID",)}
    env.update(NOTIFY_SOCKET="@" + address, WATCHDOG_USEC="1200000")  # 1.2 s: pings due every 0.3 s
    messages: list[tuple[float, str]] = []

    def drain(wait: float = 0.0) -> None:
        sock.settimeout(wait if wait > 0 else 0.001)
        with contextlib.suppress(TimeoutError, BlockingIOError):
            while True:
                data = sock.recv(4096).decode()
                messages.append((time.monotonic(), data))
                sock.settimeout(0.001)

    def has(text: str) -> bool:
        drain(0.05)
        return any(text in m for _, m in messages)

    def count(text: str) -> int:
        drain(0.05)
        return sum(text in m for _, m in messages)

    try:
        # interval + timeout (0.4 s) fit in a third of the watchdog, so supervise keeps them as given
        with supervised("--probe-interval", "0.1", "--probe-timeout", "0.3", start=False, env=env) as s:
            s.start()
            wait_for(lambda: has("READY=1"), 30, what="READY=1")
            # at READY the host mountpoint answers
            assert s.read().returncode == 0
            st = s.wait_healthy(standby=True)
            wait_for(lambda: count("WATCHDOG=1") >= 3, 10, what="watchdog pings")
            status_lines = [m for _, m in messages if m.startswith("STATUS=")]
            assert status_lines and all("\n" not in m.strip() for m in status_lines)
            assert f"serve pid {st['daemon_pid']}" in status_lines[-1]
            # a hang: no WATCHDOG=1 between the stop and the recovery
            t_stop = time.monotonic()
            signal_daemon(st["daemon_pid"], signal.SIGSTOP)
            try:
                st2 = s.wait_healthy(not_pid=st["daemon_pid"], timeout=10)
            finally:
                signal_daemon(st["daemon_pid"], signal.SIGCONT)
            drain(0.2)
            pings = [t for t, m in messages if "WATCHDOG=1" in m and t > t_stop]
            gap_start = t_stop + 0.05  # a probe answered just before the stop may still be reported
            hang_end = t_stop + 0.3  # the earliest deadline of a probe sent after the stop
            assert not [t for t in pings if gap_start < t < hang_end], "WATCHDOG=1 sent while the daemon hung"
            assert any("restarts 1" in m for _, m in messages if m.startswith("STATUS="))
            # reload
            n = len(messages)
            os.kill(s.proc.pid, signal.SIGHUP)
            wait_for(lambda: has("RELOADING=1"), 10, what="RELOADING=1")
            wait_for(
                lambda: count("READY=1") and any("READY=1" in m for _, m in messages[n:]), 30, what="READY after reload"
            )
            s.wait_healthy(not_pid=st2["daemon_pid"])
            # stop
            os.kill(s.proc.pid, signal.SIGTERM)
            assert s.proc.wait(20) == 0
            assert has("STOPPING=1")
            assert not [m for m in read_mountinfo() if m.mount_point.startswith(s.top)]
            assert not os.path.exists(os.path.join(s.state_dir, "instances"))
            assert s.status()["healthy"] is False
    finally:
        sock.close()


def test_guards_stock_lxcfs():
    """--exec runs the C LXCFS under the same watchdog: crash recovery and zero-failure reload included."""
    with supervised("--exec", "lxcfs -p {instance_dir}/lxcfs.pid {mountpoint}", "--fstype", "fuse.lxcfs") as s:
        assert any(m.mount_point == s.mountpoint and m.fstype == "fuse.lxcfs" for m in read_mountinfo())
        with reader_fleet(3, s.mountpoint, s.state_dir, attach_args=("--fstype", "fuse.lxcfs")) as fleet:
            st = s.wait_healthy(standby=True)
            t = kill_and_time(st["daemon_pid"])
            fleet.wait_recovered(t, timeout=10)
            st = s.wait_healthy(standby=True, not_pid=st["daemon_pid"])
            t = kill_and_time(s.proc.pid, signal.SIGHUP)
            s.wait_healthy(not_pid=st["daemon_pid"])
            time.sleep(1.5)
            assert fleet.failed_since(t) == {r.id: 0 for r in fleet.readers}
            assert fleet.wrong_reads() == {}


def test_crash_loop_gives_up_with_backoff():
    """A daemon that never comes up is retried with growing delays, then supervise exits non-zero and
    leaves no mount or instance directory behind."""
    with supervised("--exec", "/bin/false {mountpoint}", "--no-standby", "--max-restarts", "3", start=False) as s:
        t = time.monotonic()
        s.start()
        code = s.proc.wait(30)
        took = time.monotonic() - t
        assert code == 1, s.log()
        assert "giving up" in s.log()
        assert took >= 0.1 + 0.2 + 0.4, f"no backoff: gave up after {took:.2f} s"
        assert not [m for m in read_mountinfo() if m.mount_point.startswith(s.top)]
        assert not os.path.exists(os.path.join(s.state_dir, "instances"))


def test_exited_containers_are_unregistered_at_once():
    with supervised("--no-standby") as s, reader_fleet(3, s.mountpoint, s.state_dir) as fleet:
        reg = Registry(s.state_dir)
        ids = set(reg.load())
        assert ids == {r.id for r in fleet.readers}
        gone = fleet.readers[0]
        t = time.monotonic()
        gone.proc.kill()
        gone.proc.wait(5)
        wait_for(lambda: gone.id not in Registry(s.state_dir).load(), 5, what="the exited container to be unregistered")
        assert time.monotonic() - t < 2.0  # the proc connector, not the 10 s periodic sweep
        assert set(Registry(s.state_dir).load()) == ids - {gone.id}
        # the supervisor logs it right after the registry write the wait above saw
        wait_for(lambda: f"container {gone.id} exited: unregistered" in s.log(), 2, what="the unregister log line")
