"""Issue 11 against a real `supervise`: what an unprivileged host user (`nobody`) can do to it must not
take it down, stop `serve`, unpublish the mountpoint, or freeze its loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.support.hostile import foreign_fuse_mount
from tests.support.procs import wait_for
from tests.support.readers import reader_fleet
from tests.support.watchdog import BINARY, fusectl_restored, kill_and_time, supervised


@pytest.fixture(autouse=True)
def _fusectl_as_found():
    with fusectl_restored():
        yield


def _status(s) -> tuple[int, dict]:
    p = subprocess.run([BINARY, "status", "--json", "--state-dir", s.state_dir, "--mountpoint", s.mountpoint],
                       capture_output=True, timeout=20)
    return p.returncode, json.loads(p.stdout or b"{}")


def test_non_utf8_fuse_mount_of_an_unprivileged_user_does_not_take_supervise_down():
    """H1: `nobody` mounts a FUSE filesystem named b"\\xff" (fsname and subtype) through the setuid
    fusermount3, once while supervise runs and once before a new supervise starts: supervise stays up,
    `status` exits 0, and the containers recover from a SIGKILL of serve."""
    with supervised() as s, reader_fleet(2, s.mountpoint, s.state_dir) as fleet:
        with foreign_fuse_mount(b"\xff"):
            time.sleep(3 * 1.0)  # a few probe ticks and mount checks with the line in the table
            assert s.proc.poll() is None, s.log()
            code, st = _status(s)
            assert code == 0, st
            assert {c["state"] for c in st["containers"]} == {"live"}
            old = s.wait_healthy()["daemon_pid"]
            t = kill_and_time(old)
            s.wait_healthy(not_pid=old)
            fleet.wait_recovered(t, timeout=15)
            # a supervisor killed and started again while the line is there adopts the running daemon
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(10)
            s.start()
            st = s.wait_healthy()
            assert st["daemon_pid"] != old
            assert _status(s)[0] == 0
            assert s.proc.poll() is None, s.log()
