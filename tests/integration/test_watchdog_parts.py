"""The watchdog's kernel-facing parts on real objects: the probe against a live, a stopped and an aborted
FUSE daemon; fusectl abort; the proc connector; `lxcfs-guard status` in plain-serve and supervise mode."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lxcfs_guard.testing.daemon import serve
from lxcfs_guard.testing.procs import signal_daemon
from lxcfs_guard.testing.readers import reader_fleet
from lxcfs_guard.testing.supervise import BINARY, fusectl_restored, supervised
from lxcfs_guard.watchdog import fusectl
from lxcfs_guard.watchdog.probe import Outcome, probe
from lxcfs_guard.watchdog.procevents import ProcEvents


@pytest.fixture(autouse=True)
def _fusectl_as_found():
    with fusectl_restored():
        yield


@contextlib.contextmanager
def stopped(pid: int):
    signal_daemon(pid, signal.SIGSTOP)  # the holder and its workers: a hang of the whole daemon
    try:
        yield
    finally:
        signal_daemon(pid, signal.SIGCONT)


def test_probe_live_hung_and_aborted(tmp_path):
    with serve(state_dir=str(tmp_path / "state")) as d:
        path = d.path("proc/uptime")
        assert probe(path, 2.0).ok
        bad = probe(d.path("proc/nonexistent"), 2.0)
        assert bad.outcome is Outcome.ERROR and bad.errno == errno.ENOENT
        dev = os.stat(d.mountpoint).st_dev
        with stopped(d.pid):
            t = time.monotonic()
            hung = probe(path, 0.3)
            took = time.monotonic() - t
            assert hung.outcome is Outcome.TIMEOUT
            assert 0.3 <= took < 1.5, took  # the supervisor is not held up by the blocked read
            # a reader blocked on the hung daemon (as a container's would be) is released by the abort
            reader = subprocess.Popen(["cat", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 5
                while fusectl.waiting(dev) < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert fusectl.waiting(dev) >= 1
                assert reader.poll() is None
                assert fusectl.abort(dev)
                assert reader.wait(5) != 0
            finally:
                reader.kill()
                reader.wait()
            dead = probe(path, 2.0)
            assert dead.outcome is Outcome.ERROR and dead.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def test_fusectl_names_the_connection_of_a_mount(tmp_path):
    with serve(state_dir=str(tmp_path / "state")) as d:
        assert fusectl.ensure_mounted()
        name = fusectl.connection_name(os.stat(d.mountpoint).st_dev)
        assert os.path.exists(os.path.join(fusectl.FUSECTL_DIR, name, "abort"))
        assert fusectl.waiting(os.stat(d.mountpoint).st_dev) == 0


def test_proc_connector_reports_process_exits():
    events = ProcEvents()
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import threading, time; t = threading.Thread(target=time.sleep, args=(0.05,)); t.start(); t.join()",
            ]
        )
        child.wait(10)
        deadline = time.monotonic() + 5
        seen: list[int] = []
        while child.pid not in seen and time.monotonic() < deadline:
            seen += events.drain()
            time.sleep(0.01)
        assert child.pid in seen
        assert seen.count(child.pid) == 1  # its thread's exit is not the process's
    finally:
        events.close()


def _status(state_dir: str, mountpoint: str, *extra: str) -> tuple[int, dict]:
    p = subprocess.run(
        [BINARY, "status", "--json", "--state-dir", state_dir, "--mountpoint", mountpoint, *extra],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return p.returncode, json.loads(p.stdout)


def test_status_of_a_plain_serve(tmp_path):
    state = str(tmp_path / "state")
    with serve(state_dir=state) as d:
        code, st = _status(state, d.mountpoint)
        assert code == 0
        assert st["mode"] == "serve" and st["daemon_pid"] == d.pid and st["healthy"] is True
        assert st["restarts"] == 0 and st["last_recovery_ms"] is None
        with stopped(d.pid):
            t = time.monotonic()
            code, st = _status(state, d.mountpoint, "--timeout", "0.3")
            assert time.monotonic() - t < 5  # a hung daemon does not hang `status`
            assert code == 1 and st["healthy"] is False and st["daemon_pid"] == d.pid
    code, st = _status(state, d.mountpoint)
    assert code == 1 and st["mode"] == "stopped" and st["daemon_pid"] is None


def test_status_under_supervise_lists_containers(tmp_path):
    with supervised("--no-standby") as s, reader_fleet(3, s.mountpoint, s.state_dir) as fleet:
        code, st = _status(s.state_dir, s.mountpoint)
        assert code == 0, st
        assert st["mode"] == "supervise" and st["supervisor_pid"] == s.proc.pid
        assert st["daemon_pid"] == s.status()["daemon_pid"] and st["healthy"] is True
        assert {c["id"]: c["state"] for c in st["containers"]} == {r.id: "live" for r in fleet.readers}
        assert {c["id"]: c["pid"] for c in st["containers"]} == {r.id: r.pid for r in fleet.readers}
        old = st["daemon_pid"]
        os.kill(old, signal.SIGKILL)
        s.wait_healthy(not_pid=old)
        fleet.wait_recovered(time.monotonic_ns())
        code, st = _status(s.state_dir, s.mountpoint)
        assert code == 0 and st["restarts"] == 1 and st["last_recovery_ms"] > 0
        assert all(c["state"] == "live" for c in st["containers"])
        text = subprocess.run(
            [BINARY, "status", "--state-dir", s.state_dir], capture_output=True, text=True, timeout=20
        ).stdout
        assert f"daemon_pid:       {st['daemon_pid']}" in text and "healthy:          yes" in text
        for r in fleet.readers:
            assert r.id in text
