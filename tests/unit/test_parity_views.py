"""LXCFS 7.0 parity in the pure parts: zswap lines, the memory.high view, the quota walked up the tree."""

from __future__ import annotations

from pathlib import Path

from lxcfs_guard.cgroup import V1Reader, V2Reader
from lxcfs_guard.cgroup.facts import CpuFacts, MemoryFacts
from lxcfs_guard.cgroup.quota import parse_cpu_max, tightest
from lxcfs_guard.fs.views import cpus, meminfo
from tests.unit.test_view_renderers import HOST_MEMINFO, V1_STAT, parse

MiB = 2**20

# the order a 6.x kernel prints (fs/proc/meminfo.c): Zswap/Zswapped right after SwapFree
HOST_6X = HOST_MEMINFO.replace(
    "SwapFree:        8388000 kB\n",
    "SwapFree:        8388000 kB\nZswap:              1000 kB\nZswapped:           3000 kB\n",
)


def keys(text: str) -> list[str]:
    return [line.split(":")[0] for line in text.splitlines()]


def test_zswap_lines_from_memory_stat_in_the_kernels_place() -> None:
    mem = MemoryFacts(limit=64 * MiB, usage=10 * MiB, stat=V1_STAT, zswap=2 * MiB, zswapped=6 * MiB)
    out = meminfo.render_meminfo(HOST_6X, mem)
    assert keys(out) == keys(HOST_6X)
    v = parse(out)
    assert v["Zswap"] == "2048 kB" and v["Zswapped"] == "6144 kB"
    assert "Zswap:              2048 kB" in out.splitlines()  # the kernel's 16-wide label


def test_zswap_inserted_after_swapfree_when_the_host_file_has_none() -> None:
    mem = MemoryFacts(limit=64 * MiB, usage=10 * MiB, stat=V1_STAT, zswap=4096, zswapped=8192)
    k = keys(meminfo.render_meminfo(HOST_MEMINFO, mem))
    assert k[k.index("SwapFree") + 1 : k.index("SwapFree") + 3] == ["Zswap", "Zswapped"]
    # a cgroup without zswap figures and a host without the lines: nothing invented
    assert "Zswap" not in keys(meminfo.render_meminfo(HOST_MEMINFO, MemoryFacts(limit=64 * MiB, usage=0)))


def test_zswap_zero_on_v1_and_when_disabled() -> None:
    v1 = MemoryFacts(limit=64 * MiB, usage=10 * MiB, stat=V1_STAT)  # v1: no per-cgroup zswap figures
    v = parse(meminfo.render_meminfo(HOST_6X, v1))
    assert v["Zswap"] == "0 kB" and v["Zswapped"] == "0 kB"
    v2 = MemoryFacts(limit=64 * MiB, usage=10 * MiB, stat=V1_STAT, zswap=2 * MiB, zswapped=6 * MiB)
    off = meminfo.MeminfoOptions(zswap=False)
    v = parse(meminfo.render_meminfo(HOST_6X, v2, off))
    assert v["Zswap"] == "0 kB" and v["Zswapped"] == "0 kB"


def test_memory_high_below_max_is_memtotal_and_free_follows() -> None:
    mem = MemoryFacts(limit=512 * MiB, usage=100 * MiB, stat=V1_STAT, high=400 * MiB)
    v = parse(meminfo.render_meminfo(HOST_MEMINFO, mem))
    assert v["MemTotal"] == f"{400 * 1024} kB"
    assert v["MemFree"] == f"{300 * 1024} kB"
    assert v["MemAvailable"] == f"{300 * 1024 + 4096} kB"
    ignored = parse(meminfo.render_meminfo(HOST_MEMINFO, mem, meminfo.MeminfoOptions(memory_high=False)))
    assert ignored["MemTotal"] == f"{512 * 1024} kB"


def test_memory_high_without_max_and_above_max() -> None:
    only_high = MemoryFacts(limit=None, usage=0, stat={}, high=300 * MiB)
    assert parse(meminfo.render_meminfo(HOST_MEMINFO, only_high))["MemTotal"] == f"{300 * 1024} kB"
    above = MemoryFacts(limit=256 * MiB, usage=0, stat={}, high=300 * MiB)
    assert parse(meminfo.render_meminfo(HOST_MEMINFO, above))["MemTotal"] == f"{256 * 1024} kB"


def test_usage_over_memory_high_keeps_available_within_total() -> None:
    mem = MemoryFacts(limit=None, usage=80 * MiB, stat={"cache": 70 * MiB}, high=64 * MiB)
    v = parse(meminfo.render_meminfo(HOST_MEMINFO, mem))
    assert v["MemTotal"] == "65536 kB" and v["MemFree"] == "0 kB" and v["MemAvailable"] == "65536 kB"


def test_disable_swap_shows_none() -> None:
    mem = MemoryFacts(limit=64 * MiB, usage=0, stat={}, swap_limit=32 * MiB, swap_usage=0, swap_accounting=True)
    off = meminfo.MeminfoOptions(swap=False)
    v = parse(meminfo.render_meminfo(HOST_MEMINFO, mem, off))
    assert v["SwapTotal"] == "0 kB" and v["SwapFree"] == "0 kB"
    assert meminfo.swap_numbers(HOST_MEMINFO, mem, off) == (0, 0)


def test_v2_reader_memory_high_walks_up_and_zswap(tmp_path: Path) -> None:
    leaf = tmp_path / "a/b/c"
    leaf.mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("memory cpu\n")
    (tmp_path / "a/memory.high").write_text(f"{300 * MiB}\n")
    (tmp_path / "a/b/memory.high").write_text("max\n")
    (leaf / "memory.high").write_text(f"{400 * MiB}\n")
    (leaf / "memory.max").write_text(f"{512 * MiB}\n")
    (leaf / "memory.current").write_text(f"{MiB}\n")
    (leaf / "memory.stat").write_text("anon 1\nfile 2\nzswap 4096\nzswapped 12288\n")
    r = V2Reader(str(tmp_path))
    mem = r.memory(r.parse_proc_cgroup("0::/a/b/c\n"))
    assert mem is not None and mem.limit == 512 * MiB and mem.high == 300 * MiB
    assert (mem.zswap, mem.zswapped) == (4096, 12288)
    (leaf / "memory.stat").write_text("anon 1\nfile 2\n")  # kernel without CONFIG_ZSWAP
    mem = r.memory(r.parse_proc_cgroup("0::/a/b/c\n"))
    assert mem is not None and mem.zswap is None


def test_tightest_quota_and_cpu_max() -> None:
    assert tightest([(400000, 100000), (300000, 100000), (50000, 10000)]) == (300000, 100000)
    assert tightest([(-1, 100000)]) is None and tightest([]) is None
    assert parse_cpu_max("max 100000\n") is None and parse_cpu_max("20000 100000") == (20000, 100000)


def test_v2_quota_walks_up_to_the_root(tmp_path: Path) -> None:
    """LXCFS 7.0's test_cpu_cfs_hierarchy shape: cg1 3 CPUs, cg2 4 CPUs, the container's own `max`."""
    leaf = tmp_path / "cg1/cg2/cg3"
    leaf.mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    (tmp_path / "cg1/cpu.max").write_text("300000 100000\n")
    (tmp_path / "cg1/cg2/cpu.max").write_text("400000 100000\n")
    (leaf / "cpu.max").write_text("max 100000\n")
    (leaf / "cpuset.cpus.effective").write_text("0-3\n")
    r = V2Reader(str(tmp_path))
    facts = r.cpu(r.parse_proc_cgroup("0::/cg1/cg2/cg3/init.scope\n"))
    assert facts is not None and (facts.quota, facts.period) == (300000, 100000)
    assert cpus.visible_cpus((0, 1, 2, 3), facts, "quota") == (0, 1, 2)
    assert cpus.visible_cpus((0, 1, 2, 3), facts, "cpuset") == (0, 1, 2, 3)


def test_v1_quota_walks_up(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    (cpu / "p/c").mkdir(parents=True)
    (cpu / "p/cpu.cfs_quota_us").write_text("150000\n")
    (cpu / "p/cpu.cfs_period_us").write_text("100000\n")
    (cpu / "p/c/cpu.cfs_quota_us").write_text("-1\n")
    (cpu / "p/c/cpu.cfs_period_us").write_text("100000\n")
    r = V1Reader(str(tmp_path))
    facts = r.cpu(r.parse_proc_cgroup("4:cpu,cpuacct:/p/c\n"))
    assert facts == CpuFacts(cpus=None, quota=150000, period=100000)
    assert cpus.visible_cpus((0, 1, 2, 3), facts, "quota") == (0, 1)


def test_memavailable_v1_cache_v2_file_lru_and_reclaimable_slab() -> None:
    v1 = MemoryFacts(limit=64 * MiB, usage=10 * MiB, stat=V1_STAT)
    assert parse(meminfo.render_meminfo(HOST_MEMINFO, v1))["MemAvailable"] == f"{54 * 1024 + 4096} kB"
    v2stat = dict(V1_STAT, slab_reclaimable=MiB, slab_unreclaimable=MiB)  # v2: memory.stat has slab figures
    v2 = MemoryFacts(limit=64 * MiB, usage=10 * MiB, stat=v2stat)
    # LXCFS 7.0: MemFree + active_file (1 MiB) + inactive_file (3 MiB) + slab_reclaimable (1 MiB)
    assert parse(meminfo.render_meminfo(HOST_MEMINFO, v2))["MemAvailable"] == f"{54 * 1024 + 5 * 1024} kB"
