"""The systemd box itself (tests/support/systemd_box.py), checked with a trivial unit before it is trusted
with ours: a real systemd 252 boots as PID 1 of its own namespaces, runs a Type=notify unit with
WatchdogSec, restarts it on a watchdog timeout (SIGSTOP) and runs its ExecStartPost again; nothing of it is
left on the host afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from lxcfs_guard.testing.procs import wait_for
from tests.support.systemd_box import CGROUP_ROOT, systemd_box

pytestmark = pytest.mark.systemd

UNIT = """\
[Service]
Type=notify
NotifyAccess=all
ExecStart=/bin/sh -c 'systemd-notify --ready; while :; do systemd-notify WATCHDOG=1; sleep 0.3; done'
ExecStartPost=/bin/sh -c 'echo started >> /run/sdbox-poststart'
WatchdogSec=2s
Restart=always
RestartSec=100ms
"""


def test_watchdog_restart_and_exec_start_post_in_a_real_systemd():
    with systemd_box() as box:
        name = box.name
        assert box.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
        assert box.run("hostname").returncode == 0
        box.run("/bin/sh", "-c", f"cat > /etc/systemd/system/pinger.service <<'EOF'\n{UNIT}EOF")
        box.systemctl("daemon-reload")
        box.systemctl("start", "pinger.service")
        assert box.show("pinger.service", "ActiveState") == "active"
        assert box.show("pinger.service", "NRestarts") == "0"
        main = box.host_pid(int(box.show("pinger.service", "MainPID")))
        os.kill(main, signal.SIGSTOP)
        wait_for(lambda: box.show("pinger.service", "NRestarts") == "1", 20, 0.2, "a watchdog restart")
        wait_for(lambda: box.show("pinger.service", "ActiveState") == "active", 10, 0.2, "the unit to be back")
        assert "watchdog" in box.journal("pinger.service").lower()
        assert box.run("cat", "/run/sdbox-poststart").stdout.split() == ["started", "started"]
        assert not os.path.exists("/run/sdbox-poststart")  # the box's /run is its own
    # gone without a trace: no cgroup, no process
    leftovers = [d for d, _, _ in os.walk(CGROUP_ROOT) if name in d]
    assert leftovers == []
    assert not os.path.exists(f"/proc/{box.pid}")
