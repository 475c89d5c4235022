"""cgroup v1 and v2 readers on fixture trees: the same interface, limits found where they are set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lxcfs_guard.cgroup import CgroupGone, V1Reader, V2Reader, detect_version, open_reader
from lxcfs_guard.cgroup.base import ancestors, format_cpu_list, parse_cpu_list, strip_init_scope
from lxcfs_guard.cgroup.facts import UNLIMITED_V1, CgroupRef

UNLIM = str(UNLIMITED_V1)
MiB = 2**20


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


V1_STAT = """cache 100
rss 200
total_cache 4194304
total_rss 2097152
total_rss_huge 2097152
total_shmem 1048576
total_mapped_file 3145728
total_dirty 8192
total_writeback 4096
total_active_anon 1048576
total_inactive_anon 2097152
total_active_file 1048576
total_inactive_file 3145728
total_unevictable 0
"""


def v1_tree(tmp_path: Path) -> Path:
    """A v1 host: /lxc/c1/app/leaf, the memory limit (256 MiB) three levels above the leaf at /lxc,
    a smaller memsw at the root of the container, co-mounted cpu,cpuacct."""
    leaf = "lxc/c1/app/leaf"
    files = {
        "memory/memory.limit_in_bytes": UNLIM,
        "memory/lxc/memory.limit_in_bytes": str(256 * MiB),
        "memory/lxc/c1/memory.limit_in_bytes": UNLIM,
        "memory/lxc/c1/app/memory.limit_in_bytes": UNLIM,
        f"memory/{leaf}/memory.limit_in_bytes": UNLIM,
        f"memory/{leaf}/memory.usage_in_bytes": str(10 * MiB),
        f"memory/{leaf}/memory.stat": V1_STAT,
        f"memory/{leaf}/memory.memsw.limit_in_bytes": UNLIM,
        "memory/lxc/c1/memory.memsw.limit_in_bytes": str(320 * MiB),
        f"memory/{leaf}/memory.memsw.usage_in_bytes": str(12 * MiB),
        f"memory/{leaf}/memory.swappiness": "60\n",
        f"memory/{leaf}/cgroup.procs": "10\n11\n",
        f"cpuset/{leaf}/cpuset.cpus": "0-3\n",
        f"cpuset/{leaf}/cpuset.effective_cpus": "1,3\n",
        f"cpu,cpuacct/{leaf}/cpu.cfs_quota_us": "150000\n",
        f"cpu,cpuacct/{leaf}/cpu.cfs_period_us": "100000\n",
        f"cpu,cpuacct/{leaf}/cpuacct.usage": "4000000000\n",
        f"cpu,cpuacct/{leaf}/cpuacct.usage_all": (
            "cpu user system\n0 0 0\n1 1000000000 500000000\n2 0 0\n3 2000000000 0\n"
        ),
        f"cpu,cpuacct/{leaf}/cgroup.procs": "10\n11\n12\n",
        f"blkio/{leaf}/blkio.throttle.io_service_bytes_recursive": (
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\nTotal 12288\n"
        ),
        f"blkio/{leaf}/blkio.throttle.io_serviced_recursive": "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
    }
    write_tree(tmp_path, files)
    os.symlink("cpu,cpuacct", tmp_path / "cpu")
    os.symlink("cpu,cpuacct", tmp_path / "cpuacct")
    return tmp_path


PROC_CGROUP_V1 = """12:memory:/lxc/c1/app/leaf
11:cpu,cpuacct:/lxc/c1/app/leaf
10:cpuset:/lxc/c1/app/leaf
9:blkio:/lxc/c1/app/leaf
1:name=systemd:/lxc/c1/app/leaf/init.scope
0::/
"""


def test_v1_proc_cgroup_parsing_splits_comounted_and_strips_init_scope(tmp_path: Path) -> None:
    r = V1Reader(str(v1_tree(tmp_path)))
    ref = r.parse_proc_cgroup(PROC_CGROUP_V1)
    assert ref.get("cpu") == ref.get("cpuacct") == "/lxc/c1/app/leaf"
    assert ref.get("systemd") == "/lxc/c1/app/leaf"
    assert ref.get("") is None  # the empty unified line of a hybrid host is not a controller
    assert hash(ref) == hash(r.parse_proc_cgroup(PROC_CGROUP_V1))


def test_v1_ref_shares_one_string_per_path(tmp_path: Path) -> None:
    # a busy node keeps thousands of refs: the controllers of one cgroup must not each hold a copy of its path
    ref = V1Reader(str(v1_tree(tmp_path))).parse_proc_cgroup(PROC_CGROUP_V1)
    paths = [p for _, p in ref.paths]
    assert len(paths) > 3
    assert len({id(p) for p in paths}) == len(set(paths))
    # the kept hash is the value's: a ref made again from the same pairs is the same cache key
    again = CgroupRef(tuple(ref.paths))
    assert again == ref and hash(again) == hash(ref) and {ref: 1}[again] == 1


def test_v1_memory_limit_three_levels_up_and_swap(tmp_path: Path) -> None:
    r = V1Reader(str(v1_tree(tmp_path)))
    mem = r.memory(r.parse_proc_cgroup(PROC_CGROUP_V1))
    assert mem is not None
    assert mem.limit == 256 * MiB  # set on /lxc, three levels above the leaf
    assert mem.usage == 10 * MiB
    assert mem.stat["cache"] == 4194304 and mem.stat["rss_huge"] == 2097152  # total_* win over local
    assert mem.stat["mapped_file"] == 3145728
    assert mem.swap_accounting and mem.swap_limit == 64 * MiB  # memsw 320 MiB - memory 256 MiB
    assert mem.swap_usage == 2 * MiB
    assert mem.swappiness == 60


def test_v1_memory_without_swap_reads_no_swap_file(tmp_path: Path) -> None:
    """`swap=False` (the host has no swap): the same facts but the swap ones, and their files are not read,
    so a cgroup whose memsw and swappiness files are gone gets the same answer."""
    root = v1_tree(tmp_path)
    r = V1Reader(str(root))
    ref = r.parse_proc_cgroup(PROC_CGROUP_V1)
    full, bare = r.memory(ref), r.memory(ref, swap=False)
    assert full is not None and bare is not None
    assert (bare.limit, bare.usage, bare.stat) == (full.limit, full.usage, full.stat)
    assert not bare.swap_accounting and bare.swap_limit is bare.swap_usage is bare.swappiness is None
    leaf = root / "memory/lxc/c1/app/leaf"
    for name in ("memory.memsw.usage_in_bytes", "memory.swappiness"):
        (leaf / name).unlink()
    assert r.memory(ref, swap=False) == bare


def test_v1_memory_limits_come_from_memory_stat_when_the_kernel_puts_them_there(tmp_path: Path) -> None:
    """Real v1 kernels print hierarchical_memory_limit / hierarchical_memsw_limit (the smallest up the
    tree) in memory.stat: then no ancestor's file is read (here the ancestors' files say otherwise)."""
    root = v1_tree(tmp_path)
    stat = root / "memory/lxc/c1/app/leaf/memory.stat"
    stat.write_text(V1_STAT + f"hierarchical_memory_limit {100 * MiB}\nhierarchical_memsw_limit {150 * MiB}\n")
    r = V1Reader(str(root))
    mem = r.memory(r.parse_proc_cgroup(PROC_CGROUP_V1))
    assert mem.limit == 100 * MiB and mem.swap_limit == 50 * MiB
    stat.write_text(V1_STAT + f"hierarchical_memory_limit {UNLIM}\nhierarchical_memsw_limit {UNLIM}\n")
    mem = r.memory(r.parse_proc_cgroup(PROC_CGROUP_V1))
    assert mem.limit is None and mem.swap_limit is None


def test_v1_unlimited_memory_is_none(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)
    (root / "memory/lxc/memory.limit_in_bytes").write_text(UNLIM)
    r = V1Reader(str(root))
    mem = r.memory(r.parse_proc_cgroup(PROC_CGROUP_V1))
    assert mem is not None and mem.limit is None and mem.swap_limit is None


def test_v1_cpu_facts_prefer_effective_cpus_and_read_quota(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)
    r = V1Reader(str(root))
    ref = r.parse_proc_cgroup(PROC_CGROUP_V1)
    cpu = r.cpu(ref)
    assert cpu is not None and cpu.cpus == (1, 3) and (cpu.quota, cpu.period) == (150000, 100000)
    (root / "cpuset/lxc/c1/app/leaf/cpuset.effective_cpus").unlink()
    assert r.cpu(ref).cpus == (0, 1, 2, 3)
    (root / "cpu,cpuacct/lxc/c1/app/leaf/cpu.cfs_quota_us").write_text("-1\n")
    assert r.cpu(ref).quota is None


def test_v1_cpu_usage_per_cpu(tmp_path: Path) -> None:
    r = V1Reader(str(v1_tree(tmp_path)))
    u = r.cpu_usage(r.parse_proc_cgroup(PROC_CGROUP_V1))
    assert u is not None
    assert u.per_cpu[1] == (1000000000, 500000000) and u.per_cpu[3] == (2000000000, 0)
    assert (u.user, u.system) == (3000000000, 500000000)
    assert r.cpu_time(r.parse_proc_cgroup(PROC_CGROUP_V1)) == 4000000000  # cpuacct.usage, its own counter


def test_v1_blkio_falls_back_to_throttle_counters(tmp_path: Path) -> None:
    r = V1Reader(str(v1_tree(tmp_path)))
    io = r.io(r.parse_proc_cgroup(PROC_CGROUP_V1))
    assert io is not None
    st = io[(8, 0)]
    assert (st.rbytes, st.wbytes, st.rios, st.wios) == (4096, 8192, 1, 2)


def test_v1_missing_files_and_vanished_cgroup(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)
    r = V1Reader(str(root))
    ref = r.parse_proc_cgroup(PROC_CGROUP_V1)
    assert r.procs(ref) == [10, 11, 12]  # cpu hierarchy first
    # a controller that is not mounted: None, not an error
    no_mem = r.parse_proc_cgroup("3:pids:/x\n")
    assert r.memory(no_mem) is None and r.cpu(no_mem) is None and r.io(no_mem) is None
    # a cgroup directory that vanished: CgroupGone, so the daemon serves the host file
    gone = r.parse_proc_cgroup("12:memory:/lxc/c1/gone\n11:cpu,cpuacct:/lxc/c1/gone\n10:cpuset:/lxc/c1/gone\n")
    with pytest.raises(CgroupGone):
        r.memory(gone)
    with pytest.raises(CgroupGone):
        r.cpu_usage(gone)
    with pytest.raises(CgroupGone):
        r.cpu(gone)
    # the directory is there but memory.stat is missing: no facts
    (root / "memory/lxc/c1/app/leaf/memory.stat").unlink()
    assert r.memory(ref) is None


V2_STAT = """anon 3145728
file 5242880
kernel 1048576
kernel_stack 65536
pagetables 131072
sock 0
shmem 1048576
file_mapped 2097152
file_dirty 4096
file_writeback 0
anon_thp 2097152
file_thp 0
shmem_thp 0
inactive_anon 2097152
active_anon 2097152
inactive_file 4194304
active_file 1048576
unevictable 0
slab_reclaimable 524288
slab_unreclaimable 262144
slab 786432
"""


def v2_tree(tmp_path: Path) -> Path:
    """A v2 host: /kubepods/pod1/ctr/leaf with memory.max set on /kubepods (three levels up) and
    `max` everywhere below, swap limited on pod1."""
    leaf = "kubepods/pod1/ctr/leaf"
    files = {
        "cgroup.controllers": "cpuset cpu io memory pids\n",
        "kubepods/memory.max": f"{512 * MiB}\n",
        "kubepods/memory.swap.max": "max\n",
        "kubepods/pod1/memory.max": "max\n",
        "kubepods/pod1/memory.swap.max": f"{32 * MiB}\n",
        "kubepods/pod1/ctr/memory.max": "max\n",
        f"{leaf}/memory.max": "max\n",
        f"{leaf}/memory.swap.max": "max\n",
        f"{leaf}/memory.current": f"{20 * MiB}\n",
        f"{leaf}/memory.swap.current": f"{1 * MiB}\n",
        f"{leaf}/memory.stat": V2_STAT,
        f"{leaf}/cpuset.cpus.effective": "2-3\n",
        f"{leaf}/cpu.max": "50000 100000\n",
        f"{leaf}/cpu.stat": "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\nnr_periods 0\n",
        # A device the cgroup has a blkg for but no I/O on is listed bare, "253:1 " (seen on kernel 6.1).
        f"{leaf}/io.stat": "8:0 rbytes=1048576 wbytes=2097152 rios=10 wios=20 dbytes=0 dios=0\n253:1 \n",
        f"{leaf}/cgroup.procs": "5\n6\n",
    }
    return write_tree(tmp_path, files)


def test_v2_detect_and_open(tmp_path: Path) -> None:
    root = v2_tree(tmp_path)
    assert detect_version(str(root)) == 2
    assert isinstance(open_reader(str(root)), V2Reader)
    assert detect_version(str(tmp_path / "kubepods")) == 1


def test_v2_max_walks_up_to_the_limit_three_levels_up(tmp_path: Path) -> None:
    r = V2Reader(str(v2_tree(tmp_path)))
    ref = r.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n")
    mem = r.memory(ref)
    assert mem is not None
    assert mem.limit == 512 * MiB and mem.usage == 20 * MiB
    assert mem.swap_limit == 32 * MiB and mem.swap_usage == 1 * MiB
    assert mem.stat["mapped_file"] == 2097152  # file_mapped: LXCFS prints Mapped 0 on v2
    assert mem.stat["cache"] == 5242880 and mem.stat["rss"] == 3145728 and mem.stat["rss_huge"] == 2097152
    assert mem.stat["slab_reclaimable"] == 524288


def test_v2_memory_without_swap_reads_no_swap_file(tmp_path: Path) -> None:
    root = v2_tree(tmp_path)
    r = V2Reader(str(root))
    ref = r.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n")
    full, bare = r.memory(ref), r.memory(ref, swap=False)
    assert full is not None and bare is not None
    assert (bare.limit, bare.usage, bare.stat, bare.high) == (full.limit, full.usage, full.stat, full.high)
    assert not bare.swap_accounting and bare.swap_limit is bare.swap_usage is None
    for f in root.rglob("memory.swap.*"):
        f.unlink()
    assert r.memory(ref, swap=False) == bare


def test_v2_all_max_is_unlimited(tmp_path: Path) -> None:
    root = v2_tree(tmp_path)
    (root / "kubepods/memory.max").write_text("max\n")
    r = V2Reader(str(root))
    mem = r.memory(r.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n"))
    assert mem is not None and mem.limit is None


def test_v2_cpu_usage_io_procs(tmp_path: Path) -> None:
    r = V2Reader(str(v2_tree(tmp_path)))
    ref = r.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf/init.scope\n")
    assert ref.get("") == "/kubepods/pod1/ctr/leaf"
    cpu = r.cpu(ref)
    assert cpu is not None and cpu.cpus == (2, 3) and (cpu.quota, cpu.period) == (50000, 100000)
    u = r.cpu_usage(ref)
    assert u is not None and (u.user, u.system, u.total) == (2 * 10**9, 1 * 10**9, 3 * 10**9) and not u.per_cpu
    io = r.io(ref)
    assert io is not None and io[(8, 0)].rbytes == 1048576 and io[(8, 0)].wios == 20
    assert r.procs(ref) == [5, 6]


def test_v2_missing_controller_files_and_vanished(tmp_path: Path) -> None:
    root = v2_tree(tmp_path)
    r = V2Reader(str(root))
    ref = r.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n")
    (root / "kubepods/pod1/ctr/leaf/cpu.max").write_text("max 100000\n")
    assert r.cpu(ref).quota is None
    for name in ("memory.current", "cpu.stat", "io.stat", "cpuset.cpus.effective", "cpu.max"):
        (root / "kubepods/pod1/ctr/leaf" / name).unlink()
    assert r.memory(ref) is None and r.cpu_usage(ref) is None and r.io(ref) is None and r.cpu(ref) is None
    gone = r.parse_proc_cgroup("0::/kubepods/gone\n")
    for call in (r.memory, r.cpu, r.cpu_usage, r.io, r.procs):
        with pytest.raises(CgroupGone):
            call(gone)


def test_ref_for_pid_reads_a_proc_tree(tmp_path: Path) -> None:
    write_tree(tmp_path, {"proc/42/cgroup": "0::/a/b\n"})
    r = V2Reader(str(tmp_path))
    assert r.ref_for_pid(42, proc=str(tmp_path / "proc")).get("") == "/a/b"
    with pytest.raises(CgroupGone):
        r.ref_for_pid(43, proc=str(tmp_path / "proc"))


def test_cpu_list_syntax_round_trips() -> None:
    assert parse_cpu_list("0-3,5,7-8\n") == (0, 1, 2, 3, 5, 7, 8)
    assert parse_cpu_list("") == ()
    assert format_cpu_list([0, 1, 2, 3, 5, 7, 8]) == "0-3,5,7-8"
    assert format_cpu_list([4]) == "4"


def test_path_helpers() -> None:
    assert ancestors("/a/b/c") == ["/a/b/c", "/a/b", "/a", "/"]
    assert ancestors("/") == ["/"]
    assert strip_init_scope("/lxc/c1/init.scope") == "/lxc/c1"
    assert strip_init_scope("/init.scope") == "/"
    assert strip_init_scope("/lxc/c1") == "/lxc/c1"


def test_a_file_of_many_records_is_read_to_its_end() -> None:
    """A seq_file of many records comes back short at a record that did not fit the kernel's buffer, long
    before its end (/proc/cpuinfo of a 4-CPU VM came back with 3 CPUs): such files are read to EOF.
    /proc/self/smaps (one record per mapping, ~1.5 kB each) shows the short first read on any kernel."""
    from lxcfs_guard.cgroup.base import read_text

    with open("/proc/self/smaps", "rb") as f:
        fd = f.fileno()
        first = os.read(fd, 1 << 16)
        rest = os.read(fd, 1 << 16)
    assert rest, "the first read was the whole file: this kernel's seq_file behaves differently"
    whole = read_text("/proc/self/smaps", one_record=False)
    assert whole is not None and len(whole.encode()) > len(first)
    assert whole.count("\nSize:") + whole.startswith("Size:") > first.count(b"\nSize:")


def test_flat_keyed_files_keep_only_two_field_integer_lines() -> None:
    from lxcfs_guard.cgroup.base import parse_flat_keyed

    big = 9223372036854771712
    text = f"cache 4096\nrss  -2\n  total_rss 3 \nbad\nx y z\nk notint\n\nhierarchical_memory_limit {big}\n"
    assert parse_flat_keyed(text) == {"cache": 4096, "rss": -2, "total_rss": 3, "hierarchical_memory_limit": big}
    assert parse_flat_keyed("") == {}


def test_flat_keyed_kernel_shaped_text_parses_alike_either_way() -> None:
    """The split fast path (text in the kernel's "key value" shape) gives what the line-by-line parse gives,
    with and without `keys`; a value that is not a number in that shape still drops only its line."""
    from lxcfs_guard.cgroup import base

    text = "cache 4096\nrss -2\ntotal_rss 3\nhierarchical_memory_limit 9223372036854771712\ncache 5\n"
    slow = {k: int(v) for k, v in base._FLAT_LINE.findall(text)}
    assert (
        base.parse_flat_keyed(text)
        == slow
        == {
            "cache": 5,  # a repeated key: the last one, as the regular expression's dict has it
            "rss": -2,
            "total_rss": 3,
            "hierarchical_memory_limit": 9223372036854771712,
        }
    )
    assert base.parse_flat_keyed(text, ("total_rss", "missing", "cache")) == {"total_rss": 3, "cache": 5}
    assert base.parse_flat_keyed("a 1\nb x\nc 3\n") == {"a": 1, "c": 3}
    assert base.parse_flat_keyed("a 1\nb x\nc 3\n", ("b", "c")) == {"c": 3}
