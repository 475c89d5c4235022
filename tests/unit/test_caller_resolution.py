"""Whose view a caller gets, on a fixture /proc: namespaces are files whose inode is the namespace's
identity (hard links share one), so pid reuse across containers can be staged exactly."""

from __future__ import annotations

import os
from pathlib import Path

from lxcfs_guard.cgroup import open_reader
from lxcfs_guard.fs.caller import Resolver

STAT_TAIL = " ".join(["0"] * 30)


def _proc(root: Path, pid: str, ns: Path, nspid: str, cgroup: str, start: int = 100) -> None:
    d = root / pid
    (d / "ns").mkdir(parents=True, exist_ok=True)
    if (d / "ns" / "pid").exists():
        (d / "ns" / "pid").unlink()
    os.link(ns, d / "ns" / "pid")
    (d / "status").write_text(f"Name:\tx\nNSpid:\t{nspid}\n")
    (d / "cgroup").write_text(f"4:memory:{cgroup}\n3:cpuset:{cgroup}\n")
    fields = ["0"] * 50
    fields[18] = str(start)  # field 22 overall: after "pid (comm) S", fields[0] is field 4
    (d / "stat").write_text(f"{pid} (x) S " + " ".join(fields) + "\n")


def _fixture(tmp_path: Path) -> tuple[Path, Resolver]:
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    for ctrl in ("memory", "cpuset"):
        (cg / ctrl).mkdir(parents=True)
    nsdir = tmp_path / "ns"
    nsdir.mkdir()
    for name in ("host", "a", "b"):
        (nsdir / name).write_text(name)
    _proc(proc, "self", nsdir / "host", "1", "/")
    _proc(proc, "1", nsdir / "host", "1", "/")
    _proc(proc, "500", nsdir / "a", "500 1", "/ct-a")
    _proc(proc, "700", nsdir / "b", "700 1", "/ct-b")
    _proc(proc, "42", nsdir / "host", "42", "/host-job")
    return nsdir, Resolver(open_reader(str(cg), 1), proc=str(proc), ttl=60.0)


def test_container_caller_gets_its_init_cgroup_and_host_caller_its_own(tmp_path: Path) -> None:
    nsdir, r = _fixture(tmp_path)
    proc = tmp_path / "proc"
    _proc(proc, "600", nsdir / "a", "600 7", "/ct-a/sub")
    a = r.resolve(600)
    assert a is not None and not a.host and a.init_pid == 500 and a.ref.get("memory") == "/ct-a"
    h = r.resolve(42)
    assert h is not None and h.host and h.ref.get("memory") == "/host-job"
    assert r.resolve(0) is None and r.resolve(99999) is None


def test_a_pid_reused_by_another_container_gets_the_new_containers_view_at_once(tmp_path: Path) -> None:
    nsdir, r = _fixture(tmp_path)
    proc = tmp_path / "proc"
    _proc(proc, "600", nsdir / "a", "600 7", "/ct-a")
    assert r.resolve(600).ref.get("memory") == "/ct-a"
    # pid 600 exits and the number is handed to a process of container b, well within the cache ttl (60 s)
    _proc(proc, "600", nsdir / "b", "600 3", "/ct-b")
    again = r.resolve(600)
    assert again is not None and again.init_pid == 700 and again.ref.get("memory") == "/ct-b"


def test_a_pid_reused_from_a_container_by_a_host_process_gets_a_host_view(tmp_path: Path) -> None:
    nsdir, r = _fixture(tmp_path)
    proc = tmp_path / "proc"
    _proc(proc, "600", nsdir / "a", "600 7", "/ct-a")
    assert not r.resolve(600).host
    _proc(proc, "600", nsdir / "host", "600", "/")
    assert r.resolve(600).host


def test_a_dead_containers_namespace_number_given_to_a_new_container_gets_the_new_view(tmp_path: Path) -> None:
    """The kernel reuses a dead namespace's inode number at once; the cache is keyed by it (issue 11 M2).
    Here the namespace file of container a is handed, as is, to a new container c with another init."""
    nsdir, r = _fixture(tmp_path)
    proc = tmp_path / "proc"
    _proc(proc, "600", nsdir / "a", "600 7", "/ct-a")
    assert r.resolve(600).ref.get("memory") == "/ct-a"
    # container a dies (init 500 and 600 gone); c starts with the same namespace number, init 800
    for pid in ("500", "600"):
        for f in sorted((proc / pid).rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        (proc / pid).rmdir()
    _proc(proc, "800", nsdir / "a", "800 1", "/ct-c", start=900)
    _proc(proc, "801", nsdir / "a", "801 2", "/ct-c", start=901)
    v = r.resolve(801)
    assert v is not None and v.init_pid == 800 and v.init_start == 900 and v.ref.get("memory") == "/ct-c"


def test_an_init_pid_reused_inside_the_same_namespace_number_is_not_taken_for_the_old_init(tmp_path: Path) -> None:
    """Same number, and even the same init pid, but a later start time: a new container, a new view."""
    nsdir, r = _fixture(tmp_path)
    proc = tmp_path / "proc"
    _proc(proc, "600", nsdir / "a", "600 7", "/ct-a")
    assert r.resolve(600).ref.get("memory") == "/ct-a"
    _proc(proc, "500", nsdir / "a", "500 1", "/ct-d", start=5000)
    _proc(proc, "600", nsdir / "a", "600 7", "/ct-d", start=5001)
    v = r.resolve(600)
    assert v is not None and v.init_start == 5000 and v.ref.get("memory") == "/ct-d"
