"""lxcfs-guard.service under a real systemd 252 (booted in a throw-away box, tests/support/systemd_box.py),
installed with `make install` as a user would, with containers attached and reading every 2 ms:

- SIGKILL of the FUSE daemon: supervise restarts it and repairs the containers (systemd is not involved);
- SIGKILL of the unit's main process (supervise): systemd restarts the unit, the new supervise adopts the
  daemon that kept serving (KillMode=process), containers never notice; ExecStartPost runs again;
- SIGSTOP of supervise: systemd's watchdog (WatchdogSec) restarts the unit; again nobody notices;
- every process of the unit SIGKILLed at once: systemd restarts it, the containers are repaired by the new
  supervise's first repair and ExecStartPost;
- SIGSTOP of the daemon: supervise's own probe finds the hang, aborts and restarts it;
- `systemctl reload`: zero failed reads;
- `systemctl stop` / `start`, `make uninstall`.
NRestarts is checked after every step.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from lxcfs_guard.testing.procs import wait_for
from lxcfs_guard.testing.readers import reader_fleet
from tests.support.systemd_box import CHECKOUT, SystemdBox, systemd_box

pytestmark = pytest.mark.systemd

UNIT = "lxcfs-guard.service"
MOUNTPOINT = "/var/lib/lxcfs"
STATE_DIR = "/run/lxcfs-guard"
WATCHDOG_SEC = 3
DROPIN = f"""\
[Service]
WatchdogSec={WATCHDOG_SEC}s
"""


def status(box: SystemdBox) -> dict:
    p = box.run("/usr/local/bin/lxcfs-guard", "status", "--json", check=False)
    return json.loads(p.stdout)


def show(box: SystemdBox, prop: str) -> str:
    return box.show(UNIT, prop)


def wait_active(box: SystemdBox, timeout: float = 30.0) -> None:
    wait_for(
        lambda: show(box, "ActiveState") == "active" and show(box, "SubState") == "running",
        timeout,
        0.1,
        "lxcfs-guard.service to be active (running)",
    )


def wait_serving(box: SystemdBox, not_pid: int | None = None, timeout: float = 30.0) -> dict:
    st: dict = {}

    def ok() -> bool:
        nonlocal st
        st = status(box)
        return bool(st.get("healthy")) and st.get("daemon_pid") not in (None, not_pid)

    wait_for(ok, timeout, 0.1, f"a healthy daemon other than {not_pid}")
    return st


def post_runs(box: SystemdBox) -> int:
    """How many times ExecStartPost (`remount --all`) has run: it prints one summary line per run."""
    return box.journal(UNIT, 2000).count("container(s)")


def has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(eff & (1 << 24))


def recovered(box: SystemdBox, fleet, since_ns: int, timeout: float) -> dict[str, float]:
    """fleet.wait_recovered, printing what the box knows when it does not happen (pytest shows it)."""
    try:
        return fleet.wait_recovered(since_ns, timeout=timeout)
    except TimeoutError:
        print(box.journal(UNIT, 200))
        print(box.run("cat", f"{STATE_DIR}/status.json", check=False).stdout)
        print(box.run("grep", "fuse", f"/proc/{fleet.readers[0].pid}/mountinfo", check=False).stdout)
        raise


def now_ns() -> int:
    return time.monotonic_ns()


@pytest.fixture(scope="module")
def box():
    # the venv and the wheelhouse must be complete before the box starts: the box has no network for pip
    subprocess.run(["make", "-C", CHECKOUT, "setup", "wheelhouse"], check=True, capture_output=True, timeout=900)
    with systemd_box() as b:
        b.run("make", "-C", CHECKOUT, "install", timeout=300)
        b.run(
            "/bin/sh",
            "-c",
            f"mkdir -p /etc/systemd/system/{UNIT}.d && printf '%s' '{DROPIN}' > /etc/systemd/system/{UNIT}.d/test.conf",
        )
        b.systemctl("daemon-reload")
        b.systemctl("start", UNIT, timeout=90)
        try:
            yield b
        except BaseException:
            print(b.journal(UNIT, 300))
            raise


@pytest.fixture(scope="module")
def fleet(box):
    enter = ["nsenter", "-a", "-t", str(box.pid)]
    with reader_fleet(4, MOUNTPOINT, STATE_DIR, enter=enter, cgroup=lambda b: box.cgroup(memory=b)) as f:
        yield f


def test_install_and_start(box):
    assert box.run("readlink", "/usr/local/bin/lxcfs-guard").stdout.strip() == "/opt/lxcfs-guard/bin/lxcfs-guard"
    wait_active(box)
    assert show(box, "Type") == "notify"
    assert show(box, "WatchdogUSec") == f"{WATCHDOG_SEC}s"
    assert show(box, "NRestarts") == "0"
    assert show(box, "OOMScoreAdjust") == "-1000"
    assert show(box, "KillMode") == "process"
    assert "serve pid" in show(box, "StatusText")
    st = wait_serving(box)
    assert st["mode"] == "supervise" and st["mountpoint"] == MOUNTPOINT
    assert box.run("head", "-1", f"{MOUNTPOINT}/proc/meminfo").stdout.startswith("MemTotal:")
    assert post_runs(box) == 1
    # systemd applies OOMScoreAdjust only with CAP_SYS_RESOURCE (and ignores EPERM without it); this
    # machine's capability bounding set lacks it, so there the effective value stays 0.
    oom = box.run("cat", f"/proc/{st['daemon_pid']}/oom_score_adj").stdout.strip()
    assert oom == ("-1000" if has_cap_sys_resource() else "0")


def test_containers_read_their_own_values(box, fleet):
    st = status(box)
    assert {c["id"]: c["state"] for c in st["containers"]} == {r.id: "live" for r in fleet.readers}
    assert fleet.wrong_reads() == {}


def test_sigkill_of_the_fuse_daemon(box, fleet):
    st = wait_serving(box)
    t = now_ns()
    box.run("kill", "-KILL", str(st["daemon_pid"]))
    recovered(box, fleet, t, timeout=15)
    st2 = wait_serving(box, not_pid=st["daemon_pid"])
    assert st2["restarts"] == 1
    assert show(box, "NRestarts") == "0"  # supervise handled it; systemd did not have to
    assert fleet.wrong_reads() == {}


def test_sigkill_of_the_main_process(box, fleet):
    st = wait_serving(box)
    main, posts = show(box, "MainPID"), post_runs(box)
    t = now_ns()
    box.run("kill", "-KILL", main)
    wait_for(lambda: show(box, "NRestarts") == "1", 20, 0.1, "systemd to restart the unit")
    wait_active(box)
    assert show(box, "MainPID") != main
    st2 = wait_serving(box)
    assert st2["daemon_pid"] == st["daemon_pid"]  # adopted: the daemon kept serving throughout
    wait_for(lambda: post_runs(box) == posts + 1, 20, 0.2, "ExecStartPost to run again")
    assert sum(fleet.failed_since(t).values()) == 0
    recovered(box, fleet, t, timeout=15)


def test_sigstop_of_the_main_process_trips_the_watchdog(box, fleet):
    wait_serving(box)
    main = show(box, "MainPID")
    t = now_ns()
    box.run("kill", "-STOP", main)
    wait_for(lambda: show(box, "NRestarts") == "2", WATCHDOG_SEC + 20, 0.2, "the watchdog to restart the unit")
    wait_active(box)
    assert "watchdog timeout" in box.journal(UNIT, 300).lower()
    wait_serving(box)
    assert sum(fleet.failed_since(t).values()) == 0
    recovered(box, fleet, t, timeout=15)


def test_whole_unit_killed_is_repaired_by_the_restart(box, fleet):
    st = wait_serving(box)
    posts = post_runs(box)
    t = now_ns()
    box.systemctl("kill", "--signal=SIGKILL", UNIT)  # supervise, daemon and standby at once
    rec = recovered(box, fleet, t, timeout=30)
    assert max(rec.values()) > 0  # this time the containers did see the failure...
    wait_for(lambda: show(box, "NRestarts") == "3", 20, 0.1, "systemd to restart the unit")
    wait_active(box)
    st2 = wait_serving(box, not_pid=st["daemon_pid"])  # ...and were repaired onto a brand new daemon
    assert st2["daemon_pid"] != st["daemon_pid"]
    wait_for(lambda: post_runs(box) == posts + 1, 20, 0.2, "ExecStartPost to run again")
    assert fleet.wrong_reads() == {}


def test_sigstop_of_the_fuse_daemon(box, fleet):
    st = wait_serving(box)
    t = now_ns()
    pid = st["daemon_pid"]  # the holder and its workers (its children): the whole daemon hangs
    box.run("sh", "-c", f"kill -STOP $(cat /proc/{pid}/task/*/children) {pid}")
    rec = recovered(box, fleet, t, timeout=20)
    assert max(rec.values()) < (1.0 + 2.0 + 1.0) * 1000  # probe interval + probe timeout (defaults) + 1 s
    wait_serving(box, not_pid=st["daemon_pid"])
    assert show(box, "NRestarts") == "3"
    assert fleet.wrong_reads() == {}


def test_reload_has_zero_failed_reads(box, fleet):
    st = wait_serving(box)
    t = now_ns()
    box.systemctl("reload", UNIT)
    wait_serving(box, not_pid=st["daemon_pid"])
    wait_for(
        lambda: box.run("test", "-e", f"/proc/{st['daemon_pid']}", check=False).returncode != 0,
        15,
        0.1,
        "the old daemon to be stopped",
    )
    time.sleep(0.3)
    assert fleet.failed_since(t) == {r.id: 0 for r in fleet.readers}
    assert show(box, "NRestarts") == "3"
    wait_active(box)


def test_stop_leaves_the_binds_and_start_repairs_them(box, fleet):
    box.systemctl("stop", UNIT, timeout=60)
    assert show(box, "ActiveState") == "inactive"
    assert MOUNTPOINT not in box.run("cat", "/proc/self/mounts").stdout  # the host mountpoint is taken down
    assert "lxcfs-guard serve" not in box.run("ps", "-eo", "args").stdout
    t = now_ns()
    time.sleep(0.3)
    assert all(n > 0 for n in fleet.failed_since(t - 300_000_000).values())  # binds stayed, dead
    box.systemctl("start", UNIT, timeout=90)
    wait_active(box)
    recovered(box, fleet, t, timeout=20)
    assert fleet.wrong_reads() == {}


def test_uninstall(box, fleet):
    summary = fleet.stop()
    assert all(wrong == 0 for _, _, wrong in summary.values()), summary
    box.run("make", "-C", CHECKOUT, "uninstall", timeout=120)
    assert box.run("test", "-e", "/usr/local/bin/lxcfs-guard", check=False).returncode != 0
    assert box.run("test", "-e", f"/etc/systemd/system/{UNIT}", check=False).returncode != 0
    assert show(box, "LoadState") == "not-found"
