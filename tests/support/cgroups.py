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


def _mkdir_v1(ctrl: str, rel: str) -> str:
    path = f"{ROOT}/{ctrl}/{rel}"
    os.makedirs(path, exist_ok=True)
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
) -> Iterator[TestCgroup]:
    """A fresh cgroup with optional memory limit (bytes), cpuset, CFS quota (quota_us, period_us) and
    memory+swap limit. Processes still inside at exit are SIGKILLed by pid (they are the test's own)."""
    rel = name or f"lxcfs-guard-test-{uuid.uuid4().hex[:10]}"
    cg = TestCgroup(name=rel, v2=is_v2_host())
    try:
        if cg.v2:
            path = f"{ROOT}/{rel}"
            os.makedirs(path, exist_ok=True)
            cg.paths["unified"] = path
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
                    cg.paths[ctrl] = _mkdir_v1(ctrl, rel)
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
        for path in cg.paths.values():
            _rmdir_tree(path)
