"""Real cgroups for tests, v1 (this host) or v2 (the VM), created under a unique name and removed after."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpuset", "cpu", "cpuacct", "blkio", "pids")


def is_v2_host() -> bool:
    return os.path.exists(f"{ROOT}/cgroup.controllers")


@dataclass
class TestCgroup:
    """One cgroup (or one per v1 hierarchy) named `name`; `paths` maps controller -> directory."""

    name: str
    paths: dict[str, str] = field(default_factory=dict)
    v2: bool = False
    created: list[str] = field(default_factory=list)  # every directory we made (any level), in creation order

    def add(self, pid: int) -> None:
        for path in self.paths.values():
            with open(f"{path}/cgroup.procs", "w") as f:
                f.write(str(pid))

    def write(self, controller: str, filename: str, value: str) -> None:
        path = self.paths["unified" if self.v2 else controller]
        with open(f"{path}/{filename}", "w") as f:
            f.write(value)

    def procs(self) -> list[int]:
        out: set[int] = set()
        for path in self.paths.values():
            with contextlib.suppress(OSError), open(f"{path}/cgroup.procs") as f:
                out.update(int(x) for x in f.read().split())
        return sorted(out)


V2_DELEGATE = ("cpuset", "cpu", "io", "memory", "pids")


def _makedirs(path: str, created: list[str]) -> None:
    """os.makedirs that records each directory it made, so cleanup removes exactly those (nested names)."""
    missing = []
    d = path
    while not os.path.isdir(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        os.mkdir(d)
        created.append(d)


def _mkdir_v2(rel: str, created: list[str]) -> str:
    """Create ROOT/rel level by level. v2 shows a controller's files (memory.max, cpu.max, ...) in a cgroup only
    if its parent's cgroup.subtree_control enables it, so every level *we* create that gets a child delegates the
    controllers it has (memory cpu cpuset io pids). Levels that existed before are not touched."""
    parts = rel.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = f"{ROOT}/" + "/".join(parts[:i])
        if os.path.isdir(d):
            continue
        os.mkdir(d)
        created.append(d)
        if i < len(parts):
            with open(f"{d}/cgroup.controllers") as f:
                have = set(f.read().split())
            wanted = " ".join(f"+{c}" for c in V2_DELEGATE if c in have)
            if wanted:
                with open(f"{d}/cgroup.subtree_control", "w") as f:
                    f.write(wanted)
    return f"{ROOT}/{rel}"


def _mkdir_v1(ctrl: str, rel: str, created: list[str]) -> str:
    path = f"{ROOT}/{ctrl}/{rel}"
    _makedirs(path, created)
    if ctrl == "cpuset":
        # A new v1 cpuset is empty; copy the parent's cpus/mems down every new level, or nothing can join.
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            d = f"{ROOT}/cpuset/" + "/".join(parts[:i])
            parent = os.path.dirname(d)
            for fname in ("cpuset.cpus", "cpuset.mems"):
                with open(f"{d}/{fname}") as f:
                    if f.read().strip():
                        continue
                with open(f"{parent}/{fname}") as src, open(f"{d}/{fname}", "w") as dst:
                    dst.write(src.read().strip())
    return path


def _rmdir_tree(path: str) -> None:
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _rmdir_tree(entry.path)
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # a process we killed may take a moment to leave
    os.rmdir(path)


@contextlib.contextmanager
def make_cgroup(
    name: str | None = None,
    memory: int | None = None,
    cpus: str | None = None,
    quota: tuple[int, int] | None = None,
    swap: int | None = None,
    unified: bool = False,
) -> Iterator[TestCgroup]:
    """A fresh cgroup with optional memory limit (bytes), cpuset, CFS quota (quota_us, period_us) and
    memory+swap limit (`unified`: on a hybrid v1 host also a cgroup in the v2 hierarchy, as runc makes one).
    Processes still inside at exit are SIGKILLed by pid (they are the test's own).

    `name` may be nested ("top/a/b"): missing levels are created (on v2 with the controllers delegated down)
    and removed afterwards, deepest first; levels that already existed are left alone."""
    rel = name or f"lxcfs-guard-test-{uuid.uuid4().hex[:10]}"
    cg = TestCgroup(name=rel, v2=is_v2_host())
    try:
        if cg.v2:
            cg.paths["unified"] = _mkdir_v2(rel, cg.created)
            if memory is not None:
                cg.write("memory", "memory.max", str(memory))
            if swap is not None:
                cg.write("memory", "memory.swap.max", str(swap))
            if cpus is not None:
                cg.write("cpuset", "cpuset.cpus", cpus)
            if quota is not None:
                cg.write("cpu", "cpu.max", f"{quota[0]} {quota[1]}")
        else:
            for ctrl in V1_CONTROLLERS:
                if os.path.isdir(f"{ROOT}/{ctrl}"):
                    cg.paths[ctrl] = _mkdir_v1(ctrl, rel, cg.created)
            if unified and os.path.isdir(f"{ROOT}/unified"):
                # a hybrid host's v2 hierarchy (no controllers): where the kernel keeps the cgroup's PSI
                cg.paths["unified"] = _mkdir_v1("unified", rel, cg.created)
            if memory is not None:
                cg.write("memory", "memory.limit_in_bytes", str(memory))
            if swap is not None:
                cg.write("memory", "memory.memsw.limit_in_bytes", str(memory + swap if memory else swap))
            if cpus is not None:
                cg.write("cpuset", "cpuset.cpus", cpus)
            if quota is not None:
                cg.write("cpu", "cpu.cfs_period_us", str(quota[1]))
                cg.write("cpu", "cpu.cfs_quota_us", str(quota[0]))
        yield cg
    finally:
        for pid in cg.procs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for path in reversed(cg.created):  # deepest first: a nested leaf, then the levels we made above it
            _rmdir_tree(path)
