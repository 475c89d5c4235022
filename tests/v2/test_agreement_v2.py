"""The issue's acceptance case on a real v2 kernel: a process in a memory.max=64M, cpuset.cpus=0,
cpu.max="50000 100000" cgroup reads MemTotal 65536 kB, one processor, a /proc/stat that follows the cgroup's
cpu.stat and a /proc/diskstats that follows its io.stat; Debian's LXCFS 5.0.3, mounted in the same VM and read
by the same process, agrees on every field it virtualizes on v2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lxcfs_guard.testing.cgroups import make_cgroup
from tests.v2.util import cgfile, diskstats, io_stat, keyed, meminfo_kb, processors, read_in, stat_cpu_lines

pytestmark = pytest.mark.v2
MiB = 1024 * 1024
FILES = ("proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/diskstats", "proc/uptime", "proc/swaps",
         "sys/devices/system/cpu/online")  # fmt: skip
# meminfo fields LXCFS 5.0.3 computes from the cgroup on v2 (the rest pass the host's through, or are
# deliberately different: see DIFFERENT).
AGREED_MEMINFO = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "Active", "Inactive",
                  "Active(anon)", "Inactive(anon)", "Active(file)", "Inactive(file)",
                  "Unevictable", "Shmem")  # fmt: skip
MEM_SLACK_KB = 1024  # the readers (sh, cat) come and go between the two reads


def test_acceptance_case_and_lxcfs_agreement(guard, lxcfs) -> None:
    scratch = os.environ.get("LXCFS_GUARD_VM_SCRATCH", "/dev/vda")
    with make_cgroup(memory=64 * MiB, cpus="0", quota=(50000, 100000)) as cg:
        assert (cgfile(cg, "memory.max").strip(), cgfile(cg, "cpuset.cpus.effective").strip(),
                cgfile(cg, "cpu.max").strip()) == (str(64 * MiB), "0", "50000 100000")  # fmt: skip

        def join() -> None:
            Path(f"{cg.paths['unified']}/cgroup.procs").write_text(str(os.getpid()))

        subprocess.run(["sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"], check=True, preexec_fn=join)
        subprocess.run(["dd", "if=/dev/zero", f"of={scratch}", "bs=64k", "count=4", "oflag=direct"],
                       check=True, capture_output=True, preexec_fn=join)  # fmt: skip
        before = keyed(cgfile(cg, "cpu.stat"))
        # Each file from both mounts back to back: the reader runs at half a CPU under emulation, so
        # time-dependent fields (uptime, MemFree) must be compared from adjacent reads.
        texts = read_in(cg, *(p for f in FILES for p in (guard.path(f), f"{lxcfs}/{f}")))
        after = keyed(cgfile(cg, "cpu.stat"))
        io = io_stat(cgfile(cg, "io.stat"))
    ours, ref = dict(zip(FILES, texts[0::2], strict=True)), dict(zip(FILES, texts[1::2], strict=True))

    # What the issue says a process in this cgroup must read.
    m = meminfo_kb(ours["proc/meminfo"])
    assert m["MemTotal"] == 65536
    assert processors(ours["proc/cpuinfo"]) == [0]
    cpu = stat_cpu_lines(ours["proc/stat"])
    assert sorted(cpu) == ["cpu", "cpu0"]
    assert before["user_usec"] // 10_000 <= cpu["cpu"][0] <= after["user_usec"] // 10_000
    assert before["system_usec"] // 10_000 <= cpu["cpu"][2] <= after["system_usec"] // 10_000
    name = os.path.basename(scratch)
    rdev = os.stat(scratch).st_rdev
    disk = diskstats(ours["proc/diskstats"])[name]
    dev_io = io[f"{os.major(rdev)}:{os.minor(rdev)}"]
    assert disk[6] == dev_io["wios"] and disk[8] == dev_io["wbytes"] // 512 == 512

    # LXCFS agrees on every field it virtualizes.
    r = meminfo_kb(ref["proc/meminfo"])
    for key in AGREED_MEMINFO:
        assert abs(m[key] - r[key]) <= MEM_SLACK_KB, (key, m[key], r[key], ours["proc/meminfo"], ref["proc/meminfo"])
    assert ours["proc/cpuinfo"] == ref["proc/cpuinfo"]
    assert ours["sys/devices/system/cpu/online"] == ref["sys/devices/system/cpu/online"]
    assert sorted(stat_cpu_lines(ref["proc/stat"])) == sorted(cpu)
    # A reader in the VM's own pid namespace: both show the age of pid 1.
    assert abs(float(ours["proc/uptime"].split()[0]) - float(ref["proc/uptime"].split()[0])) < 1.0
