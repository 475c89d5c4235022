"""The DaemonSet's image run the way deploy/kubernetes/daemonset.yaml runs it, on this host, with podman:
privileged, in the host's pid (and cgroup) namespace, the mountpoint bind-mounted with shared propagation
(the pod's mountPropagation: Bidirectional), the state dir a host path, the host's /sys/fs/cgroup read-only,
/dev/fuse, and the same command and environment. A real runc container on the host, registered by the node's
OCI hook against that state dir, reads its own limits from the mount the pod made; then the pod's `serve`
is SIGKILLed and the pod's supervise repairs the container in place, with nobody touching it.

The mountpoint is a fresh temporary directory (made a shared mount of its own, as the kubelet requires of a
Bidirectional hostPath), not /var/lib/lxcfs: nothing in the DaemonSet's shape depends on the path.
The image is built by tests/support/image.py (cached by content hash); `make test-image` runs only this.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lxcfs_guard.config import FSTYPE
from lxcfs_guard.kernel.procfs import mounts_at
from lxcfs_guard.oci.runc import guard_hooks
from lxcfs_guard.testing.procs import force_unmount, wait_for
from lxcfs_guard.testing.supervise import BINARY, REPO
from tests.support import image
from tests.support.runc import container

# the first run builds the image (minutes); later ones find it cached
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

MEMTOTAL_64M = "MemTotal:          65536 kB"
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@dataclass
class Pod:
    name: str
    mountpoint: str
    state_dir: str

    def status(self) -> dict:
        with contextlib.suppress(OSError, ValueError), open(os.path.join(self.state_dir, "status.json")) as f:
            st = json.load(f)
            return st if isinstance(st, dict) else {}
        return {}

    def logs(self) -> str:
        p = image.podman("logs", self.name, check=False)
        return p.stdout + p.stderr


def daemonset_args() -> tuple[list[str], dict[str, str]]:
    """The container's command and env as deploy/kubernetes/daemonset.yaml gives them."""
    import yaml

    doc = yaml.safe_load((REPO / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    c = doc["spec"]["template"]["spec"]["containers"][0]
    return c["command"], {e["name"]: e["value"] for e in c.get("env", [])}


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    with image.no_podman_cgroups_left():
        yield from _pod()


def _pod() -> Iterator[Pod]:
    ref = image.guard_image()
    command, env = daemonset_args()
    top = tempfile.mkdtemp(prefix="lxcfs-guard-image-")
    mnt, state = os.path.join(top, "lxcfs"), os.path.join(top, "state")
    os.makedirs(mnt), os.makedirs(state)
    # the manifest's paths, moved under our tempdir
    command = [mnt if a == "/var/lib/lxcfs" else state if a == "/run/lxcfs-guard" else a for a in command]
    env = {k: mnt if v == "/var/lib/lxcfs" else state if v == "/run/lxcfs-guard" else v for k, v in env.items()}
    subprocess.run(["mount", "--bind", mnt, mnt], check=True)
    subprocess.run(["mount", "--make-shared", mnt], check=True)
    p = Pod(name=f"lxcfs-guard-image-{uuid.uuid4().hex[:10]}", mountpoint=mnt, state_dir=state)
    try:
        image.podman(
            "run", "-d", "--name", p.name,
            "--privileged", "--pid=host", "--cgroupns=host", "--network=none",
            # podman's default nofile and nproc exceed what this host lets us set (no CAP_SYS_RESOURCE)
            "--ulimit", f"nofile={NOFILE}:{NOFILE}", "--ulimit", "nproc=4096:4096",
            "-v", f"{mnt}:{mnt}:rshared",
            "-v", f"{state}:{state}",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "-v", "/dev/fuse:/dev/fuse",
            *(x for k, v in env.items() for x in ("-e", f"{k}={v}")),
            ref, *command,
        )  # fmt: skip
        try:
            wait_for(lambda: bool(p.status().get("healthy")), 60, 0.1, "the pod's supervise to report healthy")
        except TimeoutError:
            print(p.logs())
            raise
        yield p
    finally:
        image.podman("rm", "-f", "-t", "5", p.name, timeout=60, check=False)
        for m in sorted(mounts_at(mnt), key=lambda m: -len(m.mount_point)):
            force_unmount(m.mount_point)
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
        if not mounts_at(mnt):
            shutil.rmtree(top, ignore_errors=True)


def test_the_pod_serves_the_host_mountpoint(pod: Pod) -> None:
    # made inside the pod, seen on the host: shared propagation works both ways
    assert mounts_at(pod.mountpoint)[-1].fstype == FSTYPE
    with open(os.path.join(pod.mountpoint, "proc", "uptime")) as f:
        assert len(f.read().split()) == 2
    # the DaemonSet's liveness probe
    assert image.podman("exec", pod.name, "lxcfs-guard", "status", check=False).returncode == 0
    st = pod.status()
    assert st["mode"] == "supervise" and st["mountpoint"] == pod.mountpoint
    # host pid namespace: the pod's daemon is a host pid, in the pod's cgroup
    with open(f"/proc/{st['daemon_pid']}/cmdline", "rb") as f:
        assert b"serve" in f.read()


def test_a_host_container_is_served_and_repaired_after_serve_is_killed(pod: Pod) -> None:
    snippet = json.loads((Path(REPO) / "deploy" / "runc" / "config-snippet.json").read_text())
    hooks = guard_hooks(BINARY, ["--mountpoint", pod.mountpoint, "--state-dir", pod.state_dir], snippet)
    with container(memory=64 << 20, cpus="0", hooks=hooks, prefix="lgimage") as c:
        assert c.read("/proc/meminfo").splitlines()[0] == MEMTOTAL_64M
        assert c.read("/sys/devices/system/cpu/online").strip() == "0"
        victim = pod.status()["daemon_pid"]
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()

        def repaired() -> bool:
            p = c.exec("head", "-1", "/proc/meminfo", check=False, timeout=10)
            return p.returncode == 0 and p.stdout.strip() == MEMTOTAL_64M

        try:
            wait_for(lambda: pod.status().get("daemon_pid") not in (None, victim), 30, 0.05, "a new serve")
            wait_for(repaired, 30, 0.05, "the container to read its own MemTotal again")
        except TimeoutError:
            print(pod.logs())
            raise
        took = time.monotonic() - t_kill
        assert pod.status()["restarts"] >= 1
        assert c.read("/proc/meminfo").splitlines()[0] == MEMTOTAL_64M
        print(f"\nrepaired by the pod {took * 1000:.0f} ms after SIGKILL of its serve")
