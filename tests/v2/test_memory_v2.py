"""meminfo and swaps from memory.max / memory.current / memory.stat / memory.swap.* on a real v2 kernel."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from lxcfs_guard.testing.cgroups import ROOT, make_cgroup
from lxcfs_guard.testing.procs import stop, wait_for
from tests.v2.util import cgfile, meminfo_kb, read_in, start_in

pytestmark = pytest.mark.v2
MiB = 1024 * 1024


def test_memory_max_64m_is_memtotal(guard, lxcfs) -> None:
    with make_cgroup(memory=64 * MiB) as cg:
        assert cgfile(cg, "memory.max").strip() == str(64 * MiB)
        ours, ref = (meminfo_kb(t) for t in read_in(cg, guard.path("proc/meminfo"), f"{lxcfs}/proc/meminfo"))
        assert ours["MemTotal"] == 65536
        assert ref["MemTotal"] == 65536
        usage_kb = int(cgfile(cg, "memory.current")) // 1024
        # the reader has exited by now, so the cgroup holds at most what it held while reading
        assert 0 < ours["MemFree"] <= 65536
        assert abs((65536 - ours["MemFree"]) - usage_kb) < 4096, (ours["MemFree"], usage_kb)


def test_limit_three_levels_up_in_a_seven_level_hierarchy(guard, lxcfs) -> None:
    top = f"lxcfs-guard-test-{uuid.uuid4().hex[:10]}"
    levels = [top] + [f"l{i}" for i in range(2, 8)]  # 7 levels below the root
    with make_cgroup(name="/".join(levels)) as cg:
        limited = f"{ROOT}/" + "/".join(levels[:4])  # level 4: three levels above the leaf (level 7)
        with open(f"{limited}/memory.max", "w") as f:
            f.write(str(64 * MiB))
        for depth in range(1, 8):
            path = f"{ROOT}/" + "/".join(levels[:depth])
            want = str(64 * MiB) if path == limited else "max"
            assert cgfile(path, "memory.max").strip() == want, path
        ours, ref = (meminfo_kb(t) for t in read_in(cg, guard.path("proc/meminfo"), f"{lxcfs}/proc/meminfo"))
        assert ours["MemTotal"] == 65536
        assert ref["MemTotal"] == 65536


def test_swap_max_is_swaptotal_and_real_swapping_shows_as_used(guard) -> None:
    host_swap = meminfo_kb(Path("/proc/meminfo").read_text())["SwapTotal"]
    assert host_swap > 32 * 1024, "the VM's /dev/vdb swap is not on"
    with make_cgroup(memory=32 * MiB, swap=32 * MiB) as cg:
        assert cgfile(cg, "memory.swap.max").strip() == str(32 * MiB)
        meminfo, swaps = read_in(cg, guard.path("proc/meminfo"), guard.path("proc/swaps"))
        m = meminfo_kb(meminfo)
        assert m["MemTotal"] == 32768
        assert m["SwapTotal"] == 32768
        # Push 48 MiB of anonymous memory into a 32 MiB cgroup: the kernel swaps the rest out.
        hog = start_in(cg, ["python3", "-c",
                            "import sys,time\nb=[bytearray(1<<20) for _ in range(48)]\n"
                            "[x.__setitem__(slice(None,None,4096), b'x'*256) for x in b]\n"
                            "print('held', flush=True)\ntime.sleep(600)"],
                       stdout=subprocess.PIPE)  # fmt: skip
        try:
            assert hog.stdout is not None and hog.stdout.readline().strip() == b"held"
            wait_for(lambda: int(cgfile(cg, "memory.swap.current")) > 8 * MiB, 60, 0.2, "swap use")
            before = int(cgfile(cg, "memory.swap.current")) // 1024
            meminfo, swaps = read_in(cg, guard.path("proc/meminfo"), guard.path("proc/swaps"))
            after = int(cgfile(cg, "memory.swap.current")) // 1024
        finally:
            stop(hog)
        m = meminfo_kb(meminfo)
        used = m["SwapTotal"] - m["SwapFree"]
        assert m["SwapTotal"] == 32768
        assert min(before, after) - 1024 <= used <= max(before, after) + 1024, (used, before, after)
        line = [ln for ln in swaps.splitlines()[1:] if ln.strip()]
        assert len(line) == 1 and line[0].split()[:3] == ["none", "virtual", "32768"], swaps
        swaps_used = int(line[0].split()[3])  # a separate read: the kernel may have moved a few pages since
        assert min(before, after) - 1024 <= swaps_used <= max(before, after) + 1024, (swaps_used, before, after)


def test_swap_limit_inherited_from_a_parent(guard) -> None:
    top = f"lxcfs-guard-test-{uuid.uuid4().hex[:10]}"
    with make_cgroup(name=f"{top}/ct") as cg:
        with open(f"{ROOT}/{top}/memory.swap.max", "w") as f:
            f.write(str(16 * MiB))
        assert cgfile(cg, "memory.swap.max").strip() == "max"
        (meminfo,) = read_in(cg, guard.path("proc/meminfo"))
        assert meminfo_kb(meminfo)["SwapTotal"] == 16384


def test_unlimited_cgroup_sees_the_host(guard) -> None:
    with make_cgroup() as cg:
        assert cgfile(cg, "memory.max").strip() == "max"
        (meminfo,) = read_in(cg, guard.path("proc/meminfo"))
        host = meminfo_kb(Path("/proc/meminfo").read_text())
        assert meminfo_kb(meminfo)["MemTotal"] == host["MemTotal"]
        assert meminfo_kb(meminfo)["SwapTotal"] == host["SwapTotal"]
