"""LXCFS 7.0 parity on a real v2 kernel: the pressure files (read, trigger, poll), the Zswap lines, the
memory.high view, and agreement with LXCFS 7.0.0 itself on every file both serve."""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

import pytest

from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import serve
from lxcfs_guard.testing.procs import stop, wait_for
from tests.support.lxcfs7_daemon import lxcfs7
from tests.v2.util import cgfile, keyed, meminfo_kb, processors, read_in, start_in, stat_cpu_lines

pytestmark = pytest.mark.v2
MiB = 1024 * 1024
PY = sys.executable


@pytest.fixture(scope="module")
def ref7():
    with lxcfs7(("--enable-psi-poll",)) as mnt:
        yield mnt


def psi(text: str) -> dict[str, dict[str, float]]:
    return {
        line.split()[0]: {k: float(v) for k, v in (f.split("=") for f in line.split()[1:])}
        for line in text.splitlines()
    }


def test_pressure_files_match_the_cgroup_and_lxcfs7(guard, ref7) -> None:
    with make_cgroup(cpus="0") as cg:
        busy = start_in(
            cg, ["sh", "-c", "timeout 3 sh -c 'while :; do :; done' & timeout 3 sh -c 'while :; do :; done' & wait"]
        )
        busy.wait(60)
        for res in ("cpu", "io", "memory"):
            own_before, host_before = cgfile(cg, f"{res}.pressure"), Path(f"/proc/pressure/{res}").read_text()
            ours, theirs = read_in(cg, guard.path(f"proc/pressure/{res}"), f"{ref7}/proc/pressure/{res}")
            own_after, host_after = cgfile(cg, f"{res}.pressure"), Path(f"/proc/pressure/{res}").read_text()
            assert list(psi(ours)) == list(psi(theirs)) == list(psi(own_before)), (ours, theirs)
            for kind in psi(ours):
                totals = [psi(t)[kind]["total"] for t in (own_before, ours, own_after)]
                assert totals == sorted(totals), (res, kind, totals)
                # LXCFS 7.0.0 agrees on cpu and memory; for io it looks the cgroup up under v1's "blkio"
                # name, finds none on v2 and serves the host's /proc/pressure/io (a difference we keep)
                ref = (own_before, own_after) if res != "io" else (host_before, host_after)
                theirs_totals = [psi(ref[0])[kind]["total"], psi(theirs)[kind]["total"], psi(ref[1])[kind]["total"]]
                assert theirs_totals == sorted(theirs_totals), (res, kind, theirs_totals)
            if res == "cpu":
                assert psi(ours)["some"]["total"] > 0  # the two loops on one CPU waited for each other
                host = psi(Path("/proc/pressure/cpu").read_text())["some"]["total"]
                assert psi(ours)["some"]["total"] < host


TRIGGER_READER = r"""
import os, select, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NONBLOCK)
os.write(fd, b"some 50000 2000000\0")
print("armed", flush=True)
p = select.poll(); p.register(fd, select.POLLPRI)
t = time.monotonic()
ev = p.poll(120000)
print("poll", ev[0][1] if ev else 0, round(time.monotonic() - t, 2), flush=True)
"""

ALLOC_LOOP = r"""
import time
end = time.monotonic() + 90
while time.monotonic() < end:
    b = [bytearray(1 << 20) for _ in range(96)]  # 96 MiB against memory.high 32 MiB: reclaim, throttling
    for x in b:
        x[::4096] = b"x" * len(x[::4096])
    del b
"""


def test_trigger_through_our_file_fires_under_memory_high_pressure() -> None:
    """A trigger written through proc/pressure/memory by a process of the cgroup fires when an allocation
    loop pushes the cgroup against a small memory.high, and the process's poll() returns POLLPRI (triggers
    are opt-in, as in LXCFS 7.0: --enable-psi-poll)."""
    with serve(args=["--enable-psi-poll"], timeout=120) as guard, make_cgroup(swap=512 * MiB) as cg:
        with open(f"{cg.paths['unified']}/memory.high", "w") as f:
            f.write(str(32 * MiB))
        waiter = start_in(
            cg, [PY, "-c", TRIGGER_READER, guard.path("proc/pressure/memory")], stdout=subprocess.PIPE, text=True
        )
        hog = None
        try:
            assert waiter.stdout is not None and waiter.stdout.readline().strip() == "armed"
            before = psi(cgfile(cg, "memory.pressure"))["some"]["total"]
            hog = start_in(cg, [PY, "-c", ALLOC_LOOP])
            line = waiter.stdout.readline().split()
            after = psi(cgfile(cg, "memory.pressure"))["some"]["total"]
        finally:
            for p in (waiter, hog):
                if p is not None:
                    stop(p)
        assert line and line[0] == "poll" and int(line[1]) & select.POLLPRI, (line, before, after)
        assert after - before >= 50000  # the kernel saw the stall the trigger reported


def test_zswap_lines_equal_memory_stat(guard) -> None:
    with make_cgroup(memory=48 * MiB, swap=256 * MiB) as cg:
        hog = start_in(
            cg,
            [
                PY,
                "-c",
                "import time\nb=[bytearray(1<<20) for _ in range(96)]\n"
                "[x.__setitem__(slice(None,None,4096), b'x'*256) for x in b]\n"
                "print('held', flush=True)\ntime.sleep(600)",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert hog.stdout is not None and hog.stdout.readline().strip() == b"held"
            wait_for(lambda: keyed(cgfile(cg, "memory.stat")).get("zswapped", 0) > 4 * MiB, 60, 0.2, "zswap use")
            stat_before = keyed(cgfile(cg, "memory.stat"))
            (meminfo,) = read_in(cg, guard.path("proc/meminfo"))
            stat_after = keyed(cgfile(cg, "memory.stat"))
        finally:
            stop(hog)
        m = meminfo_kb(meminfo)
        keys = [line.split(":")[0] for line in meminfo.splitlines()]
        assert keys[keys.index("SwapFree") + 1 : keys.index("SwapFree") + 3] == ["Zswap", "Zswapped"]
        for line, stat_key in (("Zswap", "zswap"), ("Zswapped", "zswapped")):
            lo, hi = sorted((stat_before[stat_key] // 1024, stat_after[stat_key] // 1024))
            assert lo - 256 <= m[line] <= hi + 256, (line, m[line], lo, hi)
        assert m["Zswapped"] > 4096


def test_memory_high_below_max_is_memtotal(guard, ref7) -> None:
    with make_cgroup(memory=256 * MiB) as cg:
        with open(f"{cg.paths['unified']}/memory.high", "w") as f:
            f.write(str(128 * MiB))
        ours, theirs = (meminfo_kb(t) for t in read_in(cg, guard.path("proc/meminfo"), f"{ref7}/proc/meminfo"))
        assert ours["MemTotal"] == 131072
        assert ours["MemFree"] <= 131072 and ours["MemAvailable"] <= 131072
        assert theirs["MemTotal"] == 262144  # LXCFS 7.0.0 ignores memory.high (a difference we chose)
    with serve(args=["--memory-high", "ignore"], timeout=120) as d, make_cgroup(memory=256 * MiB) as cg:
        with open(f"{cg.paths['unified']}/memory.high", "w") as f:
            f.write(str(128 * MiB))
        (text,) = read_in(cg, d.path("proc/meminfo"))
        assert meminfo_kb(text)["MemTotal"] == 262144


# meminfo fields both compute from the cgroup the same way; the others differ by choice (README table):
# Mapped/AnonHugePages/ShmemHugePages (LXCFS prints 0 or misses them), Slab (same sum, read differently),
# SwapTotal/SwapFree and /proc/swaps: LXCFS 7.0.0 on this 6.1 kernel shows no swap in some runs and
# memory.swap.max in others (its own test_meminfo_hierarchy fails here, as the issue notes); ours always
# shows memory.swap.max.
AGREED_MEMINFO = (
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapCached",
    "Active",
    "Inactive",
    "Active(anon)",
    "Inactive(anon)",
    "Active(file)",
    "Inactive(file)",
    "Unevictable",
    "Shmem",
    "Dirty",
    "Writeback",
    "AnonPages",
    "Zswap",
    "Zswapped",
)
SLACK_KB = 1024


def test_agrees_with_lxcfs7_file_by_file(guard, ref7) -> None:
    files = ("proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/swaps", "proc/uptime", "sys/devices/system/cpu/online")
    with make_cgroup(memory=64 * MiB, swap=32 * MiB, cpus="1") as cg:
        texts = read_in(
            cg,
            *(p for f in files for p in (guard.path(f), f"{ref7}/{f}")),
            prefix=("unshare", "--pid", "--fork", "--mount-proc"),
        )
    ours, theirs = dict(zip(files, texts[0::2], strict=True)), dict(zip(files, texts[1::2], strict=True))
    m, r = meminfo_kb(ours["proc/meminfo"]), meminfo_kb(theirs["proc/meminfo"])
    assert [k.split(":")[0] for k in ours["proc/meminfo"].splitlines()] == [
        k.split(":")[0] for k in theirs["proc/meminfo"].splitlines()
    ]
    for key in AGREED_MEMINFO:
        assert abs(m[key] - r[key]) <= SLACK_KB, (key, m[key], r[key])
    assert m["MemTotal"] == 65536 and m["SwapTotal"] == 32768
    assert r["SwapTotal"] in (0, 32768)  # LXCFS 7.0.0 on 6.1: seen both, run to run
    assert ours["proc/cpuinfo"] == theirs["proc/cpuinfo"] and processors(ours["proc/cpuinfo"]) == [0]
    assert ours["sys/devices/system/cpu/online"] == theirs["sys/devices/system/cpu/online"] == "1\n"
    assert (
        sorted(stat_cpu_lines(ours["proc/stat"])) == sorted(stat_cpu_lines(theirs["proc/stat"])) == ["cpu", "cpu1"]
    )  # host numbering in the cpuset view, both
    assert ours["proc/swaps"].splitlines()[0] == theirs["proc/swaps"].splitlines()[0]
    assert ours["proc/swaps"].splitlines()[1].split()[:3] == ["none", "virtual", "32768"]
    # uptime: both the age of the new pid namespace's init
    assert abs(float(ours["proc/uptime"].split()[0]) - float(theirs["proc/uptime"].split()[0])) < 1.0
