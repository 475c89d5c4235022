"""The v2 reader and the views on files recorded from a real kernel 6.1 (tests/fixtures/v2-real, made by
`python -m tests.vm.dump_v2` in the test VM), checked against what that kernel and LXCFS 5.0.3 said there."""

from __future__ import annotations

import json
from pathlib import Path

from lxcfs_guard.cgroup import V2Reader
from lxcfs_guard.cgroup.base import parse_cpu_list
from lxcfs_guard.fs.views import cpuinfo, cpus, diskstats, meminfo, stat

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "v2-real"
MiB = 1024 * 1024


def _host(name: str) -> str:
    return (REAL / "host" / name).read_text()


def _lxcfs(name: str) -> str:
    return (REAL / "lxcfs-5.0.3-in-ct" / name).read_text()


def _kb(text: str) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines() if line.split()[1:2] != []}


def test_fixture_is_what_the_dump_set_up() -> None:
    setup = json.loads((REAL / "setup.json").read_text())
    assert setup["kernel"].startswith("6.1.")
    assert (REAL / "host/proc/PID/cgroup").read_text() == "0::/lg-parent/ct\n"


def test_reader_on_the_real_tree() -> None:
    r = V2Reader(str(REAL / "cgroup"))
    ref = r.parse_proc_cgroup((REAL / "host/proc/PID/cgroup").read_text())
    mem = r.memory(ref)
    assert mem is not None
    assert mem.limit == 64 * MiB  # set on the parent; ct's own memory.max says "max"
    assert mem.swap_limit == 32 * MiB and mem.swap_accounting
    assert mem.usage == int((REAL / "cgroup/lg-parent/ct/memory.current").read_text())
    assert mem.swap_usage and mem.swap_usage > 0  # the workload really swapped
    assert mem.stat["mapped_file"] > 0 and mem.stat["shmem"] >= 2 * MiB
    cpu = r.cpu(ref)
    assert cpu is not None and cpu.cpus == (0,) and (cpu.quota, cpu.period) == (50000, 100000)
    usage = r.cpu_usage(ref)
    assert usage is not None and usage.user > 0 and usage.total is not None
    io = r.io(ref)
    assert io is not None and io[(254, 0)].wbytes == MiB and io[(254, 0)].rbytes == MiB // 2
    assert r.procs(ref) == [int(x) for x in (REAL / "cgroup/lg-parent/ct/cgroup.procs").read_text().split()]


def test_root_cgroup_has_no_memory_or_cpu_max_files() -> None:
    # The root cgroup has memory.stat, cpu.stat and io.stat but no memory.current/max, memory.swap.* or
    # cpu.max: a caller there gets the host's meminfo.
    names = {line.split()[0] for line in (REAL / "cgroup/_files.txt").read_text().splitlines()}
    assert {"memory.stat", "cpu.stat", "io.stat", "cpuset.cpus.effective"} <= names
    assert not names & {"memory.current", "memory.max", "memory.swap.max", "memory.swap.current", "cpu.max",
                        "cpuset.cpus"}  # fmt: skip
    r = V2Reader(str(REAL / "cgroup"))
    root = r.parse_proc_cgroup("0::/\n")
    assert r.memory(root) is None
    assert r.cpu(root) is not None and r.cpu(root).quota is None


def test_io_stat_bare_device_line() -> None:
    # A cgroup with a blkg but no I/O (here: io.max set) lists the device with no keys: "254:0 ".
    text = (REAL / "cgroup/lg-parent/idle/io.stat").read_text()
    assert text == "254:0 \n"
    r = V2Reader(str(REAL / "cgroup"))
    io = r.io(r.parse_proc_cgroup("0::/lg-parent/idle\n"))
    assert io is not None and io[(254, 0)].wbytes == 0
    assert diskstats.render_diskstats(_host("proc/diskstats"), io) == ""


def test_views_on_the_real_tree_agree_with_lxcfs_where_it_virtualizes() -> None:
    r = V2Reader(str(REAL / "cgroup"))
    ref = r.parse_proc_cgroup("0::/lg-parent/ct\n")
    ours = _kb(meminfo.render_meminfo(_host("proc/meminfo"), r.memory(ref)))
    theirs = _kb(_lxcfs("proc/meminfo"))
    assert ours["MemTotal"] == theirs["MemTotal"] == 65536
    # Swap: LXCFS 5.0.3 shows 0 on v2 whatever memory.swap.max says; we show the 32 MiB limit.
    assert theirs["SwapTotal"] == 0 and ours["SwapTotal"] == 32768
    assert ours["Mapped"] > 0 and theirs["Mapped"] == 0  # LXCFS reads no file_mapped on v2
    visible = cpus.visible_cpus(parse_cpu_list(_host("sys/devices/system/cpu/online")), r.cpu(ref))
    assert visible == (0,)
    assert cpuinfo.render_cpuinfo(_host("proc/cpuinfo"), visible) == _lxcfs("proc/cpuinfo")
    rendered = stat.render_stat(_host("proc/stat"), visible, r.cpu_usage(ref))
    assert [line.split()[0] for line in rendered.splitlines()[:2]] == ["cpu", "cpu0"]
    assert [line.split()[0] for line in _lxcfs("proc/stat").splitlines()[:2]] == ["cpu", "cpu0"]
    cpu_stat = dict(line.split() for line in (REAL / "cgroup/lg-parent/ct/cpu.stat").read_text().splitlines())
    assert int(rendered.split()[1]) == int(cpu_stat["user_usec"]) // 10_000  # LXCFS shows the host's here
    disks = diskstats.render_diskstats(_host("proc/diskstats"), r.io(ref)).splitlines()
    vda = next(line.split() for line in disks if line.split()[2] == "vda")
    assert int(vda[9]) == MiB // 512  # sectors written, from io.stat (LXCFS shows the host's on v2)
