"""serve's memory stays under 40 MB after 100,000 reads and does not grow with more (LXCFS #684 was a
leak): PSS summed over the holder and its workers (pages they share count once), and no process's RSS
grows. The reader is a small C loop so the test takes seconds, not minutes."""

from __future__ import annotations

import os
import subprocess
import tempfile

from lxcfs_guard.testing import read_loop as read_rate
from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import serve


def daemon_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [pid] + [int(x) for x in f.read().split()]


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def test_rss_bounded_after_100k_reads() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="lxcfs-guard-rss-") as work,
        serve() as d,
        make_cgroup(memory=64 * 2**20) as cg,
    ):
        exe = read_rate.build_reader(work)
        # every file once per caller kind, so every code path has allocated what it keeps
        for name in (
            "proc/meminfo",
            "proc/cpuinfo",
            "proc/stat",
            "proc/uptime",
            "proc/loadavg",
            "proc/swaps",
            "proc/diskstats",
            "sys/devices/system/cpu/online",
        ):
            read_rate.run_readers(exe, cg, d.path(name), 1, 0, 200)
        # warmed with the measured load itself: four readers keep every worker busy, and a worker's first
        # requests touch pages (code, copy-on-write of the heap it inherited) that are not a leak
        read_rate.run_readers(exe, cg, d.path("proc/meminfo"), 4, 0, 5_000)
        pids = daemon_pids(d.pid)
        assert len(pids) == 1 + min(os.cpu_count() or 1, 8)  # the holder and one worker per CPU
        warm = {p: read_rate.rss_kb(p) for p in pids}
        read_rate.run_readers(exe, cg, d.path("proc/meminfo"), 4, 0, 25_000)  # 100,000 reads
        assert daemon_pids(d.pid) == pids  # no worker died meanwhile
        after = {p: read_rate.rss_kb(p) for p in pids}
        pss = sum(pss_kb(p) for p in pids)
        print(f"\nPSS after 100,000 reads: {pss} kB over {len(pids)} processes ({[pss_kb(p) for p in pids]})")
        assert pss < 40 * 1024, f"PSS {pss} kB over {len(pids)} processes"
        assert all(after[p] - warm[p] < 2 * 1024 for p in pids), f"RSS grew from {warm} kB to {after} kB"
        assert d.proc.poll() is None
        subprocess.run(["cat", d.path("proc/meminfo")], check=True, capture_output=True)
