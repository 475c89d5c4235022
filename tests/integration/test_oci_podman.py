"""The shipped hooks.d files, loaded by a real podman (4.3, runtime runc): podman reads the JSON, decides by
`when`, and runs `lxcfs-guard oci-hook` at createRuntime and poststop with the same argv for both stages.

Podman is confined to this test: its storage, run and tmp dirs and hooks dir are temporary, the container's
cgroup parent has a unique name (removed after), the rootfs is our busybox copy (`--rootfs`, no image).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.testing.procs import force_unmount
from lxcfs_guard.testing.supervise import BINARY, REPO, Supervised, supervised
from tests.support.runc import RUNC, rootfs_template

PODMAN = shutil.which("podman") or "/usr/bin/podman"
MEMTOTAL_64M = ["MemTotal:", "65536", "kB"]


@dataclass
class Podman:
    top: str
    hooks_dir: str
    rootfs: str
    cgroup_parent: str

    def __call__(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [
            PODMAN,
            "--root",
            f"{self.top}/root",
            "--runroot",
            f"{self.top}/runroot",
            "--tmpdir",
            f"{self.top}/tmp",
            "--hooks-dir",
            self.hooks_dir,
            "--runtime",
            RUNC,
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *argv,
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:3])}... failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def run_detached(self, name: str, *extra: str) -> str:
        return self(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--cgroup-parent",
            self.cgroup_parent,
            "-m",
            "64m",
            "--cpuset-cpus",
            "0",
            *extra,
            "--rootfs",
            self.rootfs,
            "sleep",
            "600",
        ).stdout.strip()


def install_hook(hooks_dir: str, shipped: Path, guard: Supervised) -> None:
    """The shipped file with this checkout's binary and the test daemon's paths: nothing else changed."""
    doc = json.loads(shipped.read_text())
    doc["hook"]["path"] = BINARY
    doc["hook"]["args"] += ["--mountpoint", guard.mountpoint, "--state-dir", guard.state_dir]
    Path(hooks_dir, shipped.name).write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def guard() -> Iterator[Supervised]:
    with supervised() as g:
        yield g


@pytest.fixture
def podman() -> Iterator[Podman]:
    top = tempfile.mkdtemp(prefix="lxcfs-guard-podman-")
    hooks = os.path.join(top, "hooks.d")
    os.makedirs(hooks)
    rootfs = os.path.join(top, "rootfs")
    subprocess.run(["cp", "-al", rootfs_template(), rootfs], check=True)
    parent = f"/lgtest-podman-{uuid.uuid4().hex[:10]}"
    pm = Podman(top, hooks, rootfs, parent)
    try:
        yield pm
    finally:
        with contextlib.suppress(Exception):
            pm("rm", "-a", "-f", "-t", "0", check=False)
        for m in reversed(read_mountinfo()):
            if m.mount_point.startswith(top + "/"):
                force_unmount(m.mount_point)
        shutil.rmtree(top, ignore_errors=True)
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            path = f"/sys/fs/cgroup/{hierarchy}{parent}"
            if os.path.isdir(path):
                for d, _, _ in sorted(os.walk(path), key=lambda x: -x[0].count("/")):
                    with contextlib.suppress(OSError):
                        os.rmdir(d)


def meminfo_first_line(pm: Podman, name: str) -> list[str]:
    return pm("exec", name, "head", "-1", "/proc/meminfo").stdout.split()


def test_hooks_d_always(guard: Supervised, podman: Podman) -> None:
    install_hook(podman.hooks_dir, REPO / "units" / "hooks.d" / "lxcfs-guard.json", guard)
    name = f"lgtest-{uuid.uuid4().hex[:10]}"
    cid = podman.run_detached(name)
    assert meminfo_first_line(podman, name) == MEMTOTAL_64M
    cpus = podman("exec", name, "grep", "-c", "^processor", "/proc/cpuinfo").stdout.strip()
    assert cpus == "1"
    assert cid in guard.listed()
    podman("rm", "-f", "-t", "0", name)
    assert cid not in guard.listed()  # poststop, same argv, told apart by the state's status


def test_hooks_d_opt_in_by_annotation(guard: Supervised, podman: Podman) -> None:
    install_hook(podman.hooks_dir, REPO / "deploy" / "podman" / "lxcfs-guard-opt-in.json", guard)
    plain, opted = f"lgtest-{uuid.uuid4().hex[:10]}", f"lgtest-{uuid.uuid4().hex[:10]}"
    plain_id = podman.run_detached(plain)
    opted_id = podman.run_detached(opted, "--annotation", "io.lxcfs-guard.enable=true")
    assert meminfo_first_line(podman, plain) != MEMTOTAL_64M
    assert meminfo_first_line(podman, opted) == MEMTOTAL_64M
    listed = guard.listed()
    assert opted_id in listed and plain_id not in listed
    podman("rm", "-f", "-t", "0", plain, opted)
    assert opted_id not in guard.listed()
