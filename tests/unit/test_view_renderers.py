"""The pure views, fed by hand: LXCFS 5.0.3's numbers on v1, the gaps it leaves closed."""

from __future__ import annotations

from lxcfs_guard.cgroup.facts import CpuFacts, CpuUsage, IoStat, MemoryFacts
from lxcfs_guard.fs.views import cpuinfo, cpuonline, cpus, diskstats, loadavg, meminfo, stat, swaps, uptime

MiB = 2**20

HOST_MEMINFO = """MemTotal:       24684092 kB
MemFree:        23613088 kB
MemAvailable:   24328924 kB
Buffers:           21316 kB
Cached:           861904 kB
SwapCached:          100 kB
Active:           376724 kB
Inactive:         506700 kB
Active(anon):       1548 kB
Inactive(anon):     7548 kB
Active(file):     375176 kB
Inactive(file):   499152 kB
Unevictable:       15764 kB
Mlocked:           14628 kB
SwapTotal:       8388604 kB
SwapFree:        8388000 kB
Dirty:                96 kB
Writeback:             0 kB
AnonPages:         16004 kB
Mapped:            10676 kB
Shmem:              8856 kB
KReclaimable:      98328 kB
Slab:             124140 kB
SReclaimable:      98328 kB
SUnreclaim:        25812 kB
KernelStack:        1524 kB
WritebackTmp:          0 kB
CommitLimit:    12342044 kB
AnonHugePages:     20480 kB
ShmemHugePages:        0 kB
ShmemPmdMapped:        0 kB
FileHugePages:     57344 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

V1_STAT = {
    "cache": 4 * MiB,
    "rss": 2 * MiB,
    "rss_huge": 2 * MiB,
    "shmem": 1 * MiB,
    "mapped_file": 3 * MiB,
    "dirty": 8192,
    "writeback": 4096,
    "active_anon": 1 * MiB,
    "inactive_anon": 2 * MiB,
    "active_file": 1 * MiB,
    "inactive_file": 3 * MiB,
    "unevictable": 0,
}


def parse(text: str) -> dict[str, str]:
    return {line.split(":")[0]: line.split(":", 1)[1].strip() for line in text.splitlines()}


def test_meminfo_v1_numbers_and_order() -> None:
    mem = MemoryFacts(
        limit=64 * MiB,
        usage=10 * MiB,
        stat=V1_STAT,
        swap_limit=32 * MiB,
        swap_usage=1 * MiB,
        swap_accounting=True,
        swappiness=60,
    )
    out = meminfo.render_meminfo(HOST_MEMINFO, mem)
    assert [line.split(":")[0] for line in out.splitlines()] == [
        line.split(":")[0] for line in HOST_MEMINFO.splitlines()
    ]
    v = parse(out)
    assert out.splitlines()[0] == "MemTotal:          65536 kB"  # LXCFS's exact format
    assert v["MemTotal"] == "65536 kB" and v["MemFree"] == "55296 kB"
    assert v["MemAvailable"] == f"{55296 + 4096} kB" and v["Cached"] == "4096 kB"
    assert v["Buffers"] == "0 kB" and v["SwapCached"] == "0 kB"
    assert v["Active"] == "2048 kB" and v["Inactive"] == "5120 kB"
    assert v["Active(anon)"] == "1024 kB" and v["Inactive(file)"] == "3072 kB"
    assert v["AnonPages"] == "2048 kB"  # active+inactive anon - shmem
    assert v["Mapped"] == "3072 kB" and v["Shmem"] == "1024 kB"
    assert v["Dirty"] == "8 kB" and v["Writeback"] == "4 kB" and v["WritebackTmp"] == "0 kB"
    assert v["Slab"] == "0 kB" and v["SReclaimable"] == "0 kB" and v["SUnreclaim"] == "0 kB"
    assert v["SwapTotal"] == "32768 kB" and v["SwapFree"] == "31744 kB"
    assert v["AnonHugePages"] == "2048 kB"  # LXCFS 5.0.3 prints 0 here on v1
    # lines the cgroup knows nothing about pass through untouched
    for key in ("Mlocked", "KReclaimable", "KernelStack", "CommitLimit", "FileHugePages", "HugePages_Total"):
        assert v[key] == parse(HOST_MEMINFO)[key]


def test_meminfo_limit_above_host_and_unlimited_use_host_total() -> None:
    for limit in (None, 64 * 2**40):
        mem = MemoryFacts(limit=limit, usage=100 * MiB, stat=V1_STAT)
        v = parse(meminfo.render_meminfo(HOST_MEMINFO, mem))
        assert v["MemTotal"] == "24684092 kB"
        assert v["MemFree"] == f"{24684092 - 102400} kB"
        # no swap accounting: the host's swap passes through
        assert v["SwapTotal"] == "8388604 kB" and v["SwapFree"] == "8388000 kB"


def test_meminfo_usage_above_limit_never_goes_negative_and_swap_capped_by_host() -> None:
    mem = MemoryFacts(
        limit=64 * MiB, usage=65 * MiB, stat={}, swap_limit=64 * 2**30, swap_usage=0, swap_accounting=True
    )
    v = parse(meminfo.render_meminfo(HOST_MEMINFO, mem))
    assert v["MemFree"] == "0 kB"
    assert v["SwapTotal"] == "8388604 kB" and v["SwapFree"] == "8388000 kB"


def test_meminfo_swappiness_zero_hides_swap() -> None:
    mem = MemoryFacts(
        limit=64 * MiB, usage=0, stat={}, swap_limit=32 * MiB, swap_usage=0, swap_accounting=True, swappiness=0
    )
    v = parse(meminfo.render_meminfo(HOST_MEMINFO, mem))
    assert v["SwapTotal"] == "0 kB" and v["SwapFree"] == "0 kB"


def test_meminfo_on_a_host_without_swap_is_the_same_without_the_cgroups_swap_figures() -> None:
    """What lets a host without swap skip the swap files: whatever the cgroup's swap figures, its view shows
    0 and 0, exactly as with none (swappiness and memsw left out, as `memory(ref, swap=False)` leaves them)."""
    no_swap = HOST_MEMINFO.replace("SwapTotal:       8388604 kB", "SwapTotal:             0 kB")
    no_swap = "\n".join("SwapFree: 0 kB" if ln.startswith("SwapFree:") else ln for ln in no_swap.splitlines())
    assert meminfo.host_has_swap(HOST_MEMINFO) and not meminfo.host_has_swap(no_swap)
    bare = MemoryFacts(limit=64 * MiB, usage=MiB, stat=V1_STAT)
    for swappiness in (0, 60):
        full = MemoryFacts(
            limit=64 * MiB,
            usage=MiB,
            stat=V1_STAT,
            swap_limit=32 * MiB,
            swap_usage=MiB,
            swap_accounting=True,
            swappiness=swappiness,
        )
        assert meminfo.render_meminfo(no_swap, full) == meminfo.render_meminfo(no_swap, bare)
        assert meminfo.swap_numbers(no_swap, full) == meminfo.swap_numbers(no_swap, bare) == (0, 0)
    # with host swap the figures do show: there they are read
    assert meminfo.swap_numbers(HOST_MEMINFO, full) == (32768, 1024) != meminfo.swap_numbers(HOST_MEMINFO, bare)


def test_meminfo_v2_mapped_and_slab() -> None:
    stat = dict(V1_STAT, mapped_file=5 * MiB, slab_reclaimable=1 * MiB, slab_unreclaimable=512 * 1024)
    mem = MemoryFacts(limit=256 * MiB, usage=20 * MiB, stat=stat, swap_limit=None, swap_usage=0, swap_accounting=True)
    v = parse(meminfo.render_meminfo(HOST_MEMINFO, mem))
    assert v["Mapped"] == "5120 kB"  # LXCFS prints 0 on v2
    assert v["Slab"] == "1536 kB" and v["SReclaimable"] == "1024 kB" and v["SUnreclaim"] == "512 kB"
    assert v["MemTotal"] == "262144 kB"


def test_swaps_line_only_with_swap() -> None:
    assert swaps.render_swaps(0, 0) == swaps.HEADER
    out = swaps.render_swaps(32768, 1024)
    assert out.splitlines()[1].split() == ["none", "virtual", "32768", "1024", "0"]
    mem = MemoryFacts(
        limit=64 * MiB, usage=10 * MiB, stat={}, swap_limit=32 * MiB, swap_usage=1 * MiB, swap_accounting=True
    )
    assert meminfo.swap_numbers(HOST_MEMINFO, mem) == (32768, 1024)


HOST_CPUINFO = "".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\ncore id\t\t: {i}\nflags\t\t: fpu\n\n" for i in range(4)
)


def test_cpuinfo_keeps_the_cpuset_and_renumbers() -> None:
    out = cpuinfo.render_cpuinfo(HOST_CPUINFO, (1, 3))
    procs = [line for line in out.splitlines() if line.startswith("processor")]
    assert procs == ["processor\t: 0", "processor\t: 1"]
    assert [line for line in out.splitlines() if line.startswith("core id")] == ["core id\t\t: 1", "core id\t\t: 3"]
    assert out.endswith("flags\t\t: fpu\n\n")


def test_visible_cpus_cpuset_and_quota_views() -> None:
    online = (0, 1, 2, 3)
    facts = CpuFacts(cpus=(1, 2, 3), quota=150000, period=100000)
    assert cpus.visible_cpus(online, facts, "cpuset") == (1, 2, 3)
    assert cpus.visible_cpus(online, facts, "quota") == (1, 2)  # ceil(1.5) = 2
    assert cpus.visible_cpus(online, CpuFacts(cpus=(0,), quota=50000, period=100000), "quota") == (0,)
    assert cpus.visible_cpus(online, None) == online
    assert cpus.visible_cpus(online, CpuFacts(cpus=(7,))) == online  # stale cpuset: never empty
    assert cpuonline.render_cpu_online((0, 1, 2, 5)) == "0-2,5\n"
    assert cpuonline.render_cpu_online_count(1) == "0\n" and cpuonline.render_cpu_online_count(3) == "0-2\n"


def host_stat(ncpu: int) -> str:
    lines = ["cpu  " + " ".join(["1000"] * 10)]
    lines += [f"cpu{i} 100 5 50 10000 7 1 2 3 0 0" for i in range(ncpu)]
    lines += [
        "intr 12345 0 0",
        "ctxt 999",
        "btime 1700000000",
        "processes 77",
        "procs_running 2",
        "procs_blocked 0",
        "softirq 1 2 3",
    ]
    return "\n".join(lines) + "\n"


def test_stat_v1_per_cpu_usage_and_idle_adjustment() -> None:
    usage = CpuUsage(user=30 * 10**7, system=10 * 10**7, per_cpu={1: (30 * 10**7, 10 * 10**7), 3: (0, 0)})
    out = stat.render_stat(host_stat(4), (1, 3), usage).splitlines()
    # host cpu1: used = 100+5+50+7+1+2+3 = 168, cgroup used 40 -> idle 10000 + 128
    assert out[1] == "cpu1 30 0 10 10128 0 0 0 0 0 0"
    assert out[2] == "cpu3 0 0 0 10168 0 0 0 0 0 0"
    assert out[0] == "cpu  30 0 10 20296 0 0 0 0 0 0"
    assert out[3:] == host_stat(4).splitlines()[5:]  # the other keys pass through, in order
    renumbered = stat.render_stat(host_stat(4), (1, 3), usage, renumber=True).splitlines()
    assert [line.split()[0] for line in renumbered[:3]] == ["cpu", "cpu0", "cpu1"]


def test_stat_v2_totals_spread_and_many_cpus_never_truncated() -> None:
    usage = CpuUsage(user=40 * 10**7, system=20 * 10**7)
    out = stat.render_stat(host_stat(4), (2, 3), usage).splitlines()
    assert out[1].split()[:4] == ["cpu2", "20", "0", "10"] and out[2].split()[:4] == ["cpu3", "20", "0", "10"]
    big = host_stat(1024)
    out = stat.render_stat(big, tuple(range(1024)), CpuUsage(0, 0, {i: (0, 0) for i in range(1024)}))
    assert out.count("\ncpu") == 1024 and out.endswith("softirq 1 2 3\n")
    assert "\ncpu1023 0 0 0 10168 0 0 0 0 0 0\n" in out  # nothing cut


def test_uptime() -> None:
    assert uptime.render_uptime(100.0, 30.5) == "100.00 69.50\n"
    assert uptime.render_uptime(10.0, 30.0) == "10.00 10.00\n"  # busier than old (many CPUs): idle = age
    assert uptime.render_uptime(-1.0, 0.0) == "0.00 0.00\n"


def test_loadavg_kernel_decay() -> None:
    avg = (0, 0, 0)
    for _ in range(12):  # one minute of 1 runnable task
        avg = loadavg.decay(avg, 1)
    one = avg[0] / loadavg.FIXED_1
    assert 0.60 < one < 0.66  # 1 - 1/e
    assert avg[0] > avg[1] > avg[2] > 0
    for _ in range(200):
        avg = loadavg.decay(avg, 0)
    assert avg[0] == 0
    text = loadavg.render_loadavg((2048 + 1024, 2048, 0), 3, 42, 9999)
    assert text == "1.50 1.00 0.00 3/42 9999\n"
    assert loadavg.host_last_pid("0.1 0.2 0.3 1/100 4321\n") == 4321


def test_diskstats_only_devices_the_cgroup_used() -> None:
    host = (
        "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"
        "   8       1 sda1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"
        " 253       0 dm-0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"
    )
    io = {(8, 0): IoStat(rbytes=1024, wbytes=4096, rios=2, wios=1), (253, 0): IoStat()}
    out = diskstats.render_diskstats(host, io).splitlines()
    assert len(out) == 1
    assert out[0].split()[:10] == ["8", "0", "sda", "2", "0", "2", "0", "1", "0", "8"]
    assert out[0].startswith("   8       0 sda ")
