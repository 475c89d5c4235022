"""Content: the glue between caller, readers and views. Fixture trees stand in for /sys/fs/cgroup and
/proc, so every fallback to the host file is exercised without a kernel."""

from __future__ import annotations

import os
from pathlib import Path

from lxcfs_guard.cgroup import V1Reader, V2Reader
from lxcfs_guard.fs import content as content_mod
from lxcfs_guard.fs.caller import View
from lxcfs_guard.fs.content import Content
from lxcfs_guard.fs.loadavg import LoadSampler, count_threads
from lxcfs_guard.fs.tree import ROOT_INODE, Tree
from tests.unit.test_cgroup_readers import PROC_CGROUP_V1, v1_tree, v2_tree, write_tree
from tests.unit.test_view_renderers import HOST_CPUINFO, HOST_MEMINFO, host_stat


def host_files(tmp_path: Path) -> dict[str, str]:
    files = {
        "proc/meminfo": HOST_MEMINFO,
        "proc/cpuinfo": HOST_CPUINFO,
        "proc/stat": host_stat(4),
        "proc/swaps": "Filename\tType\tSize\tUsed\tPriority\n/dev/zram0 partition 8388604 0 100\n",
        "proc/uptime": "1000.00 3000.00\n",
        "proc/loadavg": "0.50 0.40 0.30 2/300 4242\n",
        "proc/diskstats": "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n",
        "proc/slabinfo": "slabinfo - version: 2.1\n",
        "sys/devices/system/cpu/online": "0-3\n",
    }
    write_tree(tmp_path / "host", files)
    return {name: str(tmp_path / "host" / name) for name in files}


def test_v1_render_and_host_fallbacks(tmp_path: Path) -> None:
    reader = V1Reader(str(v1_tree(tmp_path / "cg")))
    paths = host_files(tmp_path)
    c = Content(reader, ttl=0, host_paths=paths)
    view = View(ref=reader.parse_proc_cgroup(PROC_CGROUP_V1), init_pid=1, init_start=0, host=True)
    mem = c.render("proc/meminfo", view).decode()
    assert mem.startswith("MemTotal:         262144 kB\n")
    assert c.render("sys/devices/system/cpu/online", view) == b"1,3\n"
    assert c.render("proc/cpuinfo", view).decode().count("processor") == 2
    st = c.render("proc/stat", view).decode().splitlines()
    assert st[1].startswith("cpu1 100 0 50 ") and st[2].startswith("cpu3 200 0 0 ")
    assert c.render("proc/diskstats", view).decode().split()[:3] == ["8", "0", "sda"]
    assert c.render("proc/swaps", view).decode().splitlines()[1].split()[2:4] == ["65536", "2048"]
    # nothing resolved (pid 0, process gone): the host's own file
    assert c.render("proc/meminfo", None).decode() == HOST_MEMINFO
    # a controller that is not there: the host file, not an error
    nomem = View(ref=reader.parse_proc_cgroup("3:pids:/x\n"), init_pid=1, init_start=0, host=True)
    assert c.render("proc/meminfo", nomem).decode() == HOST_MEMINFO
    assert c.render("proc/stat", nomem).decode() == host_stat(4)
    # a cgroup that vanished between resolution and render: the host file
    gone = View(
        ref=reader.parse_proc_cgroup("12:memory:/lxc/gone\n11:cpu,cpuacct:/lxc/gone\n"),
        init_pid=1,
        init_start=0,
        host=True,
    )
    assert c.render("proc/meminfo", gone).decode() == HOST_MEMINFO
    assert c.render("proc/stat", gone).decode() == host_stat(4)


def test_on_a_host_without_swap_no_swap_file_is_read(tmp_path: Path) -> None:
    """The cgroup's swap files are replaced by directories, which cannot be read (EISDIR): a render that
    read them would fall back to the host file. On a host without swap the view is still the cgroup's;
    with host swap it is not (that is how the test knows they would have been read)."""
    root = v1_tree(tmp_path / "cg")
    leaf = root / "memory/lxc/c1/app/leaf"
    for name in ("memory.memsw.usage_in_bytes", "memory.swappiness"):
        (leaf / name).unlink()
        (leaf / name).mkdir()
    reader = V1Reader(str(root))
    view = View(ref=reader.parse_proc_cgroup(PROC_CGROUP_V1), init_pid=1, init_start=0, host=True)
    paths = host_files(tmp_path)
    with_swap = Content(reader, ttl=0, host_paths=paths)
    assert with_swap.render("proc/meminfo", view).decode() == HOST_MEMINFO
    Path(paths["proc/meminfo"]).write_text(
        HOST_MEMINFO.replace("SwapTotal:       8388604 kB", "SwapTotal:             0 kB")
    )
    without = Content(reader, ttl=0, host_paths=paths)
    for name in ("proc/meminfo", "proc/swaps"):
        assert without.render(name, view).decode() != Path(paths[name]).read_text(), name
    assert without.render("proc/meminfo", view).decode().startswith("MemTotal:         262144 kB\n")


def test_v2_render_virtualizes_stat_and_diskstats(tmp_path: Path) -> None:
    reader = V2Reader(str(v2_tree(tmp_path / "cg")))
    c = Content(reader, ttl=0, host_paths=host_files(tmp_path))
    view = View(ref=reader.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n"), init_pid=7, init_start=50_000, host=False)
    mem = c.render("proc/meminfo", view).decode()
    assert "MemTotal:         524288 kB" in mem and "Mapped:             2048 kB" in mem
    st = c.render("proc/stat", view).decode().splitlines()
    assert st[0] == "cpu  200 0 100 " + st[0].split()[4] + " 0 0 0 0 0 0"  # cpu.stat, not the host's
    assert [line.split()[0] for line in st[:3]] == ["cpu", "cpu2", "cpu3"]
    assert c.render("proc/diskstats", view).decode().split()[3] == "10"  # rios from io.stat
    up = c.render("proc/uptime", view).decode().split()
    ticks = content_mod.clock_ticks()
    assert float(up[0]) == round(1000.0 - 50_000 / ticks, 2)
    assert c.render("sys/devices/system/cpu/online", view) == b"2-3\n"
    quota = Content(reader, cpu_view="quota", ttl=0, host_paths=host_files(tmp_path))
    assert quota.render("sys/devices/system/cpu/online", view) == b"0\n"  # ceil(50000/100000) = 1


def test_render_cache_is_per_cgroup_and_expires(tmp_path: Path) -> None:
    root = v2_tree(tmp_path / "cg")
    reader = V2Reader(str(root))
    c = Content(reader, ttl=3600, host_paths=host_files(tmp_path))
    view = View(ref=reader.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n"), init_pid=7, init_start=0, host=False)
    first = c.render("proc/meminfo", view)
    (root / "kubepods/memory.max").write_text(f"{128 * 2**20}\n")
    assert c.render("proc/meminfo", view) == first  # cached
    c.ttl = 0
    c._cache.clear()
    assert b"MemTotal:         131072 kB" in c.render("proc/meminfo", view)


def test_a_broken_view_serves_the_host_file(tmp_path: Path, monkeypatch) -> None:
    reader = V2Reader(str(v2_tree(tmp_path / "cg")))
    c = Content(reader, ttl=0, host_paths=host_files(tmp_path))
    view = View(ref=reader.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n"), init_pid=7, init_start=0, host=False)

    def boom(host, mem):
        raise RuntimeError("bug")

    monkeypatch.setattr(content_mod.meminfo, "render_meminfo", boom)
    assert c.render("proc/meminfo", view).decode() == HOST_MEMINFO


def test_loadavg_sampler_counts_running_threads(tmp_path: Path) -> None:
    cg = v2_tree(tmp_path / "cg")
    proc = tmp_path / "proc"
    write_tree(
        proc,
        {
            "5/task/5/stat": "5 (a b) R 1 2 3\n",
            "5/task/8/stat": "8 (a b) S 1 2 3\n",
            "6/task/6/stat": "6 (x) D 1 2 3\n",
        },
    )
    assert count_threads([5, 6, 99], str(proc)) == (2, 3)
    reader = V2Reader(str(cg))
    sampler = LoadSampler(reader, proc=str(proc))
    ref = reader.parse_proc_cgroup("0::/kubepods/pod1/ctr/leaf\n")
    avg, running, total = sampler.get(ref)
    assert avg == (0, 0, 0) and (running, total) == (2, 3)
    for _ in range(12):
        sampler.tick()
    avg, _, _ = sampler.get(ref)
    assert 1.2 < avg[0] / 2048 < 1.3  # 2 active for a minute: 2 * (1 - 1/e)
    c = Content(reader, ttl=0, sampler=sampler, host_paths=host_files(tmp_path))
    view = View(ref=ref, init_pid=7, init_start=0, host=False)
    text = c.render("proc/loadavg", view).decode()
    assert text.split()[3:] == ["2/3", "4242"]
    # a cgroup nobody read for long is forgotten
    sampler.idle_after = -1
    sampler.tick()
    assert len(sampler) == 0


def test_tree_has_the_lxcfs_layout() -> None:
    t = Tree()
    proc = t.lookup(ROOT_INODE, b"proc")
    assert proc is not None and proc.is_dir
    assert sorted(proc.children) == sorted(
        n.encode()
        for n in ("cpuinfo", "diskstats", "loadavg", "meminfo", "stat", "swaps", "uptime", "slabinfo", "pressure")
    )
    node = ROOT_INODE
    for part in (b"sys", b"devices", b"system", b"cpu", b"online"):
        found = t.lookup(node, part)
        assert found is not None
        node = found.inode
    assert not t.get(node).is_dir
    assert t.lookup(ROOT_INODE, b"nope") is None
    assert t.lookup(t.by_path["proc/meminfo"], b"x") is None


def test_a_refused_open_or_listing_reply_frees_its_snapshot(tmp_path: Path) -> None:
    """fs/fastpath.py calls reply_failed(fh) when the kernel refuses an OPEN's or OPENDIR's reply (answered
    twice after a resend): no RELEASE will come, so the snapshot must go now, a listing's (LISTING_FH set)
    as well as a file's."""
    from lxcfs_guard.fs.caller import Resolver
    from lxcfs_guard.fs.operations import LISTING_FH, Operations

    reader = V1Reader(str(v1_tree(tmp_path / "cg")))
    paths = host_files(tmp_path)
    for resource in ("cpu", "io", "memory"):
        paths[f"proc/pressure/{resource}"] = str(tmp_path / "host" / "proc" / resource)
    ops = Operations(Tree(), Resolver(reader), Content(reader, host_paths=paths))
    file_fh, listing_fh = ops._keep(b"MemTotal: 1 kB\n"), ops._keep(b"cpu0\x00", LISTING_FH)
    assert ops.snapshots.live_blocks() == 2
    ops.reply_failed(file_fh)
    ops.reply_failed(listing_fh)
    assert ops.snapshots.live_blocks() == 0


def test_warming_up_renders_every_view_and_keeps_nothing(tmp_path: Path, monkeypatch) -> None:
    """What the holder runs before it forks its workers: every renderer but loadavg's (the sampler would be
    told of the holder's own cgroup), nothing in the render cache, and a view that cannot be made is no
    reason to stop."""
    reader = V1Reader(str(v1_tree(tmp_path / "cg")))
    asked: list[object] = []

    class Sampler:
        def get(self, ref: object) -> None:
            asked.append(ref)

    c = Content(reader, ttl=3600, sampler=Sampler(), host_paths=host_files(tmp_path))
    rendered: list[str] = []
    for name, render in list(c._renderers.items()):

        def counted(view: View, name: str = name, render=render) -> str | None:
            rendered.append(name)
            if name == "proc/stat":
                raise content_mod.CgroupGone("gone")
            return render(view)

        monkeypatch.setitem(c._renderers, name, counted)
    view = View(ref=reader.parse_proc_cgroup(PROC_CGROUP_V1), init_pid=1, init_start=0, host=True)
    c.warm(view, times=3)
    expected = {n for n in c._renderers if n != "proc/loadavg" and "pressure" not in n}
    assert set(rendered) == expected and len(rendered) == 3 * len(expected)
    assert asked == [] and c._cache == {}


def test_warm_up_renders_the_callers_own_cgroup_and_closes_what_it_held(tmp_path: Path, monkeypatch) -> None:
    """daemon.warm_up: Content.warm for the holder's own cgroup (its /proc/self/cgroup, as a host caller),
    then the held cgroup files closed, the holder never reads them again; a failing warm-up is only logged."""
    from lxcfs_guard.fs import daemon

    reader = V1Reader(str(v1_tree(tmp_path / "cg")))
    c = Content(reader, ttl=0, host_paths=host_files(tmp_path))
    closed: list[bool] = []

    class Files:
        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(reader, "files", Files())
    views: list[View] = []
    monkeypatch.setattr(c, "warm", views.append)
    daemon.warm_up(c, reader)
    with open(f"/proc/{os.getpid()}/cgroup") as f:
        assert [v.ref for v in views] == [reader.parse_proc_cgroup(f.read())]
    assert views[0].host and closed == [True]

    def broken(view: View) -> None:
        raise RuntimeError("a bug in a view")

    monkeypatch.setattr(c, "warm", broken)
    daemon.warm_up(c, reader)  # logged, not raised
    assert closed == [True, True]
