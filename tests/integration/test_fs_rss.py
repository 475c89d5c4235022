"""serve's resident memory stays under 40 MB after 100,000 reads and does not grow with more
(LXCFS #684 was a leak). The reader is a small C loop so the test takes seconds, not minutes."""

from __future__ import annotations

import subprocess
import tempfile

from lxcfs_guard.testing import read_loop as read_rate
from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import serve


def test_rss_bounded_after_100k_reads() -> None:
    with tempfile.TemporaryDirectory(prefix="lxcfs-guard-rss-") as work, serve() as d, \
            make_cgroup(memory=64 * 2**20) as cg:
        exe = read_rate.build_reader(work)
        # every file once per caller kind, so every code path has allocated what it keeps
        for name in ("proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime", "proc/loadavg", "proc/swaps",
                     "proc/diskstats", "sys/devices/system/cpu/online"):
            read_rate.run_readers(exe, cg, d.path(name), 1, 0, 200)
        read_rate.run_readers(exe, cg, d.path("proc/meminfo"), 2, 0, 10_000)
        warm = read_rate.rss_kb(d.pid)
        read_rate.run_readers(exe, cg, d.path("proc/meminfo"), 4, 0, 25_000)  # 100,000 reads
        after = read_rate.rss_kb(d.pid)
        assert after < 40 * 1024, f"RSS {after} kB"
        assert after - warm < 2 * 1024, f"RSS grew from {warm} kB to {after} kB"
        assert d.proc.poll() is None
        subprocess.run(["cat", d.path("proc/meminfo")], check=True, capture_output=True)
