"""Issue 11 against a real `supervise`: what an unprivileged host user (`nobody`) can do to it must not
take it down, stop `serve`, unpublish the mountpoint, or freeze its loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from lxcfs_guard.testing.procs import wait_for
from lxcfs_guard.testing.readers import reader_fleet
from lxcfs_guard.testing.supervise import BINARY, fusectl_restored, kill_and_time, supervised
from tests.support.hostile import foreign_fuse_mount


@pytest.fixture(autouse=True)
def _fusectl_as_found():
    with fusectl_restored():
        yield


def _status(s) -> tuple[int, dict]:
    p = subprocess.run(
        [BINARY, "status", "--json", "--state-dir", s.state_dir, "--mountpoint", s.mountpoint],
        capture_output=True,
        timeout=20,
    )
    return p.returncode, json.loads(p.stdout or b"{}")


def test_non_utf8_fuse_mount_of_an_unprivileged_user_does_not_take_supervise_down():
    """H1: `nobody` mounts a FUSE filesystem named b"\\xff" (fsname and subtype) through the setuid
    fusermount3, once while supervise runs and once before a new supervise starts: supervise stays up,
    `status` exits 0, and the containers recover from a SIGKILL of serve."""
    with supervised() as s, reader_fleet(2, s.mountpoint, s.state_dir) as fleet, foreign_fuse_mount(b"\xff"):
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


def _state_files(state_dir: str) -> list[str]:
    out = []
    for root, dirs, names in os.walk(state_dir):
        dirs[:] = [d for d in dirs if d != "instances"]  # the daemons' private mountpoints
        out += [os.path.join(root, n) for n in names]
    return out


def test_an_unprivileged_user_can_neither_open_the_state_nor_hold_its_locks():
    """M1: lock files were 0644 in a 0755 directory, and flock needs only a read fd: `nobody` froze
    register/unregister (the registry lock had no timeout) and kept supervise from starting."""
    from tests.support.hostile import as_nobody

    with supervised("--no-standby") as s, reader_fleet(1, s.mountpoint, s.state_dir) as fleet:
        os.chmod(s.top, 0o755)  # as /run is: the state directory's own mode is what must keep others out
        names = _state_files(s.state_dir)
        assert {"registry.json", "registry.lock", "supervise.lock", "status.json"} <= {
            os.path.basename(n) for n in names
        }
        for path in names:
            p = subprocess.run(as_nobody(["cat", path]), capture_output=True, timeout=10)
            assert p.returncode != 0 and b"Permission denied" in p.stderr, path
        holders = [
            subprocess.Popen(
                as_nobody(["flock", "-s", os.path.join(s.state_dir, name), "sleep", "60"]),
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for name in ("registry.lock", "supervise.lock", "remount.lock")
        ]
        try:
            time.sleep(0.5)
            cid = fleet.readers[0].id
            p = s_cli(s, "unregister", "--id", cid)
            assert p.returncode == 0, p.stderr
            p = s_cli(s, "register", "--id", cid, "--pid", str(fleet.readers[0].pid))
            assert p.returncode == 0, p.stderr
            s.proc.send_signal(signal.SIGKILL)  # and a new supervise starts (and adopts) at once
            s.proc.wait(10)
            s.start()
            s.wait_healthy(timeout=20)
        finally:
            for h in holders:
                if h.poll() is None:
                    os.kill(h.pid, signal.SIGKILL)
                h.wait(10)


def s_cli(s, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BINARY, *argv, "--state-dir", s.state_dir, "--mountpoint", s.mountpoint],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_a_container_wedging_its_repair_does_not_freeze_the_supervisor():
    """H2 (supervisor side): a container with a never-answering FUSE mount over the path of one of its
    binds holds the repair for the engine's whole per-namespace timeout. The repair ran inside the loop:
    the new serve was up but the host mountpoint was not published, status stopped updating and SIGTERM
    waited. Now the loop goes on: published at once, status updated, SIGTERM honoured within seconds."""
    from tests.support.hostile import hung_fuse_mount_in

    with (
        supervised("--no-standby", "--remount-timeout", "20") as s,
        reader_fleet(2, s.mountpoint, s.state_dir) as fleet,
    ):
        wedged = fleet.readers[1]
        with hung_fuse_mount_in(wedged.pid, "/sys/devices/system/cpu"):
            old = s.wait_healthy()["daemon_pid"]
            kill_and_time(old)
            st = s.wait_healthy(not_pid=old, timeout=10)  # the loop is not frozen: status follows
            assert st["healthy"] is True
            p = s.read("proc/meminfo", timeout=5)  # the host mountpoint is on the new serve already
            assert p.returncode == 0 and b"MemTotal" in p.stdout
            time.sleep(1.0)
            assert s.status()["updated"] > time.time() - 3  # still rewritten while the repair hangs
            t = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            assert s.proc.wait(15) == 0
            assert time.monotonic() - t < 8, "SIGTERM waited for the wedged repair"


def test_container_ids_with_control_characters_are_escaped_wherever_printed():
    """L6: an id with a terminal escape, a newline forging a log line and a non-UTF-8 byte went raw into the
    supervisor's log and `status`, whose strict stdout crashed on the byte."""
    evil = os.fsdecode(b"evil\x1b[2J\nlxcfs-guard supervise: forged\xff")
    with supervised("--no-standby") as s, reader_fleet(2, s.mountpoint, s.state_dir) as fleet:
        victim = fleet.readers[1]
        p = subprocess.run(
            [
                os.fsencode(BINARY),
                b"register",
                b"--id",
                os.fsencode(evil),
                b"--pid",
                str(victim.pid).encode(),
                b"--state-dir",
                os.fsencode(s.state_dir),
                b"--mountpoint",
                os.fsencode(s.mountpoint),
            ],
            capture_output=True,
            timeout=20,
        )
        assert p.returncode == 0, p.stderr
        text = subprocess.run(
            [BINARY, "status", "--state-dir", s.state_dir, "--mountpoint", s.mountpoint],
            capture_output=True,
            timeout=20,
            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        )
        assert text.returncode == 0, text.stderr
        out = text.stdout.decode()
        assert "\x1b" not in out and "evil\\x1b[2J\\nlxcfs-guard supervise: forged\\xff" in out
        assert not [line for line in out.splitlines() if line.startswith("lxcfs-guard supervise: forged")]
        victim.proc.kill()
        victim.proc.wait(5)
        wait_for(lambda: "exited: unregistered" in s.log() and "forged" in s.log(), 10, what="the unregister line")
        log = s.log()
        assert "\x1b" not in log and "\udcff" not in log
        assert not [line for line in log.splitlines() if line.startswith("lxcfs-guard supervise: forged")]
        assert "container evil\\x1b[2J\\nlxcfs-guard supervise: forged\\xff exited: unregistered" in log
