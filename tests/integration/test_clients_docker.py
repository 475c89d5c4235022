"""Docker, with the usual LXCFS recipe: `docker run -m 64m -v MNT/proc/meminfo:/proc/meminfo:rw ...` (every
proc file and cpu/online), a private dockerd started by the test, a busybox image made with `docker import`.
SIGKILL of serve under `supervise` three times: `docker exec` reads its own MemTotal again each time, no
mount is stacked, `remount --all` exits 0, and `df` in the container prints no error."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from lxcfs_guard import config
from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.testing.supervise import supervised
from tests.integration.client_helpers import check_remount_all, diagnose, mntns_of
from tests.support.docker import docker_available, dockerd

pytestmark = pytest.mark.skipif(not docker_available(), reason="docker.io and busybox-static come from make setup")

PROBE = r"""
m=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
o=$(head -n1 /sys/devices/system/cpu/online)  # read(2): busybox cat uses sendfile, see the report
df >/dev/null 2>/tmp/df.err; d=$?; e=$(wc -c < /tmp/df.err)
echo "$m|$o|$d|$e"
"""


def _mounts(pid: int) -> list[tuple[str, str]]:
    return sorted((m.root, m.mount_point) for m in read_mountinfo(pid) if m.fstype == config.FSTYPE)


def test_docker_container_reads_its_own_memtotal_after_each_kill() -> None:
    with supervised(prefix="lxcfs-guard-client-") as g, dockerd() as dk:
        image = dk.import_busybox()
        binds = []
        for rel in config.DEFAULT_BINDS:
            binds += ["-v", f"{g.mountpoint}/{rel}:{config.target_for(rel)}:rw"]
        cid = (
            dk.cli("run", "-d", "-m", "64m", "--cpuset-cpus", "0", "--network", "none", *binds, image, "sleep", "3600")
            .stdout.decode()
            .strip()
        )
        pid = int(dk.cli("inspect", "-f", "{{.State.Pid}}", cid).stdout)
        want = "65536|0|0|0"

        def probe() -> str:
            r = dk.cli("exec", cid, "sh", "-c", PROBE, check=False, timeout=20)
            return r.stdout.decode().strip()

        assert probe() == want
        before = _mounts(pid)
        assert len(before) == len(config.DEFAULT_BINDS)
        for round_ in range(3):
            old = g.daemon_pid()
            os.kill(old, signal.SIGKILL)
            t0, got = time.monotonic(), ""
            while time.monotonic() - t0 < 20:
                got = probe()
                if got == want and g.daemon_pid() not in (None, old):
                    break
                time.sleep(0.05)
            assert got == want, f"round {round_}: {got!r}\n{g.log()[-3000:]}" + diagnose(g, probe)
            assert _mounts(pid) == before, "a mount was stacked or lost"
            check_remount_all(g, {mntns_of(pid)})
            assert _mounts(pid) == before
            r = subprocess.run(["df", g.mountpoint], capture_output=True, text=True, timeout=10)
            assert r.returncode == 0 and r.stderr == "", r.stderr  # the host's df of the recovered mount
