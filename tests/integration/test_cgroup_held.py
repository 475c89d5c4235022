"""Held cgroup files (cgroup/held.py) on real cgroups: a reread shows the kernel's figures of now, a removed
cgroup is never read through its old file, and nothing but cgroup files is held."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from lxcfs_guard.cgroup import open_reader
from lxcfs_guard.cgroup.held import HeldFiles
from lxcfs_guard.testing.cgroups import is_v2_host, make_cgroup

MiB = 1 << 20
LIMIT_FILE = "memory.max" if is_v2_host() else "memory.limit_in_bytes"


def _limit_path(cg) -> str:
    return f"{cg.paths['unified' if cg.v2 else 'memory']}/{LIMIT_FILE}"


def _open_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is closed by now
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def test_a_held_file_reread_gives_the_figures_of_now() -> None:
    files = HeldFiles()
    with make_cgroup(memory=64 * MiB) as cg:
        path = _limit_path(cg)
        assert files.read(path) == f"{64 * MiB}\n"
        assert len(files) == 1 and path in _open_fds()
        cg.write("memory", LIMIT_FILE, str(32 * MiB))
        assert files.read(path) == f"{32 * MiB}\n"  # pread at 0: the kernel writes the file anew
        assert len(files) == 1
    files.close()
    assert path not in _open_fds()


def test_a_removed_cgroup_is_not_read_through_its_old_file() -> None:
    """A container restarted under the same cgroup name: its new cgroup is read, never the dead one."""
    files = HeldFiles()
    name = f"lxcfs-guard-test-{uuid.uuid4().hex[:10]}"
    with make_cgroup(name=name, memory=64 * MiB) as cg:
        path = _limit_path(cg)
        assert files.read(path) == f"{64 * MiB}\n"
    assert files.read(path) is None and len(files) == 0  # gone: ENODEV through the held fd, then ENOENT
    with make_cgroup(name=name, memory=32 * MiB) as cg:
        assert files.read(path) == f"{32 * MiB}\n" and len(files) == 1
    # removed and made again between two reads, the old cgroup's fd still held
    with make_cgroup(name=name, memory=16 * MiB) as cg:
        assert _limit_path(cg) == path
        assert files.read(path) == f"{16 * MiB}\n"
    files.close()


def test_the_reader_holds_its_render_files() -> None:
    reader = open_reader()
    with make_cgroup(memory=64 * MiB) as cg:
        pid = os.fork()
        if pid == 0:  # a process in the cgroup to resolve it from
            time.sleep(30)
            os._exit(0)
        try:
            cg.add(pid)
            ref = reader.ref_for_pid(pid)
            first = reader.memory(ref, swap=False)
            assert first is not None and first.limit == 64 * MiB
            held = len(reader.files)
            assert held >= 2  # the usage and memory.stat
            cg.write("memory", LIMIT_FILE, str(48 * MiB))
            # v1: from memory.stat's hierarchical_memory_limit, v2: memory.max up the tree; held files, reread
            assert reader.memory(ref, swap=False).limit == 48 * MiB
            assert len(reader.files) == held
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    reader.files.close()


def test_regular_files_are_not_held(tmp_path: Path) -> None:
    """Only a cgroup filesystem's files: an unlinked regular file would go on answering through a kept fd."""
    files = HeldFiles()
    f = tmp_path / "memory.stat"
    f.write_text("cache 1\n")
    assert files.read(str(f)) == "cache 1\n" and len(files) == 0
    f.unlink()
    assert files.read(str(f)) is None
    big = tmp_path / "big"
    big.write_text("x" * 70_000 + "\n")  # past the first 64 KiB read: read whole, never held
    assert files.read(str(big)) == "x" * 70_000 + "\n" and len(files) == 0


def test_budget_and_idle_files_are_closed() -> None:
    files = HeldFiles(budget=1, idle=0.1)
    with make_cgroup(memory=64 * MiB) as a, make_cgroup(memory=32 * MiB) as b:
        pa, pb = _limit_path(a), _limit_path(b)
        assert files.read(pa) == f"{64 * MiB}\n" and files.read(pb) == f"{32 * MiB}\n"
        assert len(files) == 1 and pa in _open_fds() and pb not in _open_fds()  # past the budget: not held
        deadline = time.monotonic() + 5
        while pa in _open_fds() and time.monotonic() < deadline:
            files.read(pb)  # pa unread for two sweeps: closed
            time.sleep(0.05)
        assert pa not in _open_fds()
        assert files.read(pa) == f"{64 * MiB}\n"  # and read afresh when asked again
    files.close()


def test_a_forked_child_does_not_keep_its_parents_files() -> None:
    files = HeldFiles()
    with make_cgroup(memory=64 * MiB) as cg:
        path = _limit_path(cg)
        files.read(path)
        assert len(files) == 1
        pid = os.fork()
        if pid == 0:
            ok = len(files) == 0 and path not in _open_fds() and files.read(path) == f"{64 * MiB}\n"
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(files) == 1 and path in _open_fds()
    files.close()


def test_the_budget_leaves_most_fds_to_the_rest() -> None:
    """Held files take at most a quarter of the fd limit (pidfds and the device need the rest)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with make_cgroup(memory=64 * MiB) as cg:
        d = cg.paths["unified" if cg.v2 else "memory"]
        names = sorted(n for n in os.listdir(d) if n.startswith("memory.") and os.access(f"{d}/{n}", os.R_OK))
        limit = len(os.listdir("/proc/self/fd")) + 20
        assert len(names) > limit // 4
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            files = HeldFiles(budget=1000)
            for n in names:
                with contextlib.suppress(OSError):  # some are write-only in effect (EINVAL on read)
                    files.read(f"{d}/{n}")
            assert files.budget == limit // 4 and len(files) == limit // 4
            files.close()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
