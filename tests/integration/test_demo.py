"""`make demo`, run as a newcomer runs it: it must pass, say what it promised, finish well under a minute and
leave nothing behind (container, cgroup, mount, state dir, process)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from lxcfs_guard.kernel.procfs import read_mountinfo

REPO = Path(__file__).resolve().parents[2]


def test_make_demo() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LXCFS_GUARD_") and k != "NOTIFY_SOCKET"}
    t = time.monotonic()
    p = subprocess.run(["make", "-s", "-C", str(REPO), "demo"], capture_output=True, text=True, timeout=180, env=env)
    took = time.monotonic() - t
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert took < 60, f"make demo took {took:.0f} s"

    rows = {
        m.group(1).strip(): (m.group(2), m.group(3))
        for m in re.finditer(r"^ {6}(\S.{0,21}?)\s{2,}(\S.*?)\s{3,}(\S.*)$", out, re.M)
    }
    assert rows["MemTotal"][1] == "65536 kB", out
    assert rows["processors (cpuinfo)"][1] == "1", out
    assert rows["cpu/online"][1] == "0", out
    assert re.search(r"^\s+\| lxcfs-guard-demo-\w+\s+\d+\s+live\s+8$", out, re.M), out
    gap = re.search(r"recovery gap seen inside the container: (\d+) ms", out)
    assert gap and int(gap.group(1)) < 1000, out
    # the worker serving the reads killed: replaced, and the container saw no failed read
    assert re.search(r"killed the worker serving the reads, pid \d+ \(kill -9\); replaced by pid \d+", out), out
    assert re.search(r"inside, \d+ reads since the kill, none failed:  MemTotal: +65536 kB", out), out
    failed = re.search(r"inside, \d+ reads? failed:  (.*)$", out, re.M)
    # ENOTCONN once the connection is gone; ECONNABORTED for a read in flight when it went; EIO (seen once
    # in four runs) for a request the kernel could not finish as the workers died with their holder
    assert "no read failed" in out or (
        failed
        and failed.group(1).endswith(
            ("Transport endpoint is not connected", "Software caused connection abort", "Input/output error")
        )
    ), out
    assert "poststop hook unregistered it" in out and "mount gone" in out

    work = re.search(r"on (/\S+)/mnt$", out, re.M)
    assert work, out
    top = work.group(1)
    assert not os.path.exists(top), f"{top} left behind"
    assert not [m for m in read_mountinfo() if m.mount_point.startswith(top)]
    cid = re.search(r"run a runc container (lxcfs-guard-demo-\w+)", out).group(1)
    assert subprocess.run(["runc", "state", cid], capture_output=True).returncode != 0
    assert not [h for h in os.listdir("/sys/fs/cgroup") if os.path.exists(f"/sys/fs/cgroup/{h}/{cid}")]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert top.encode() not in cmd, f"process {pid} left behind: {cmd!r}"
