"""cpuinfo, cpu/online and /proc/stat from cpuset.cpus(.effective), cpu.max and cpu.stat on a real v2 kernel."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import lxcfs_reference, serve
from lxcfs_guard.testing.procs import stop
from tests.v2.util import cgfile, keyed, processors, read_in, start_in, stat_cpu_lines

pytestmark = pytest.mark.v2
BUSY = ["sh", "-c", "while :; do :; done"]
USEC_PER_TICK = 10_000  # USER_HZ 100


def test_cpuset_one_cpu_renumbered_like_lxcfs(guard, lxcfs) -> None:
    with make_cgroup(cpus="1") as cg:
        assert cgfile(cg, "cpuset.cpus").strip() == "1"
        assert cgfile(cg, "cpuset.cpus.effective").strip() == "1"
        files = ("proc/cpuinfo", "sys/devices/system/cpu/online", "proc/stat")
        texts = read_in(cg, *(guard.path(f) for f in files), *(f"{lxcfs}/{f}" for f in files))
        ours, ref = dict(zip(files, texts[:3], strict=True)), dict(zip(files, texts[3:], strict=True))
        assert processors(ours["proc/cpuinfo"]) == [0]
        assert ours["proc/cpuinfo"] == ref["proc/cpuinfo"]
        assert ours["sys/devices/system/cpu/online"] == ref["sys/devices/system/cpu/online"] == "1\n"
        assert sorted(stat_cpu_lines(ours["proc/stat"])) == sorted(stat_cpu_lines(ref["proc/stat"])) == ["cpu", "cpu1"]


def test_cpu_max_cuts_the_cpus_with_the_quota_view_like_lxcfs_enable_cfs(guard) -> None:
    with make_cgroup(quota=(50000, 100000)) as cg:
        assert cgfile(cg, "cpu.max").strip() == "50000 100000"
        effective = cgfile(cg, "cpuset.cpus.effective").strip()
        assert len(effective.split("-")) == 2  # every VM CPU allowed
        n_cpus = int(effective.split("-")[1]) + 1
        with (
            serve(args=["--cpu-view", "quota"], timeout=120) as quota,
            lxcfs_reference(args=("--enable-cfs",), timeout=120) as ref,
        ):
            files = ("proc/cpuinfo", "sys/devices/system/cpu/online")
            texts = read_in(
                cg, *(quota.path(f) for f in files), *(f"{ref}/{f}" for f in files), guard.path("proc/cpuinfo")
            )
        assert processors(texts[0]) == [0]  # ceil(50000/100000) = 1 CPU
        assert texts[1] == "0\n"
        assert processors(texts[2]) == [0] and texts[3] == "0\n"
        assert processors(texts[4]) == list(
            range(n_cpus)
        )  # the default (cpuset) view ignores the quota, like LXCFS without it


def _cg_user_system(cg) -> tuple[int, int]:
    s = keyed(cgfile(cg, "cpu.stat"))
    return s["user_usec"] // USEC_PER_TICK, s["system_usec"] // USEC_PER_TICK


def test_stat_follows_the_cgroups_cpu_stat_not_the_host(guard) -> None:
    with make_cgroup(cpus="0") as cg, make_cgroup(cpus="0") as other:
        busy = start_in(cg, BUSY)
        time.sleep(2.0)
        stop(busy)
        u0, s0 = _cg_user_system(cg)
        (text,) = read_in(cg, guard.path("proc/stat"))
        u1, s1 = _cg_user_system(cg)
        lines = stat_cpu_lines(text)
        assert sorted(lines) == ["cpu", "cpu0"]
        user, system = lines["cpu"][0], lines["cpu"][2]
        assert u0 <= user <= u1 and s0 <= system <= s1, (lines["cpu"], (u0, s0), (u1, s1))
        assert user >= 50, f"a 2 s busy loop left only {user} ticks of user time"
        assert lines["cpu0"][:3] == lines["cpu"][:3]

        # Another cgroup burns CPU 0: the host's user time grows, the container's only by what its own
        # readers (sh, cat: tens of ms under emulation) cost, and still matches its cpu.stat.
        host0 = stat_cpu_lines(Path("/proc/stat").read_text())["cpu0"]
        busy = start_in(other, BUSY)
        time.sleep(2.0)
        stop(busy)
        host1 = stat_cpu_lines(Path("/proc/stat").read_text())["cpu0"]
        u0, s0 = _cg_user_system(cg)
        (text,) = read_in(cg, guard.path("proc/stat"))
        u1, s1 = _cg_user_system(cg)
        after = stat_cpu_lines(text)["cpu"]
        host_grew = host1[0] - host0[0]
        assert host_grew >= 50, (host0, host1)
        assert u0 <= after[0] <= u1 and s0 <= after[2] <= s1, (after, (u0, s0), (u1, s1))
        assert after[0] - user < host_grew // 4, (user, after, host_grew)
        # ...and what the container did not use is idle, so its CPU's times still add up to the host's.
        assert abs(sum(after[:8]) - sum(host1[:8])) <= 50 + (sum(host1[:8]) // 50), (after, host1)
