"""A Kubernetes-style pod layout without Kubernetes (deploy/kubernetes/daemonset.yaml, pod-volumes.yaml):

- the node's /var/lib/lxcfs (a tempdir standing for it) is a shared mount on the host side;
- the guard runs `supervise` in its own mount namespace on an rshared bind of it (the DaemonSet's
  `mountPropagation: Bidirectional`): the FUSE mount made there appears on the node's directory;
- application containers (runc) get hostPath FILE binds of the node's files over /proc/... and
  /sys/devices/system/cpu/online (pod-volumes.yaml), and a hostPath DIRECTORY bind of the whole mount at
  /var/lib/lxcfs (some charts mount the directory).
After SIGKILL of serve (three times) every one of those binds answers again, nothing is stacked, and
`remount --all` run in the guard's namespace (kubectl exec) exits 0.
The directory bind needs the remount helper's directory repair: assertions marked NEEDS-DIR-REPAIR."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

from lxcfs_guard import config
from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.testing.procs import force_unmount
from lxcfs_guard.testing.supervise import supervised
from tests.integration.client_helpers import check_remount_all, diagnose, mntns_of
from tests.support.runc import container

PROBE = r"""
m=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
o=$(head -n1 /sys/devices/system/cpu/online)  # read(2): busybox cat uses sendfile, see the report
n=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /var/lib/lxcfs/proc/meminfo)
echo "$m|$o|$n"
"""
# In the guard's namespace: its /var/lib/lxcfs ($MP) is an rshared bind of the node's directory, and its
# state directory is private (the instances' own mounts stay in the pod, as with a plain hostPath).
POD_NS = """set -e
mount --bind "$NODE" "$MP"
mount --make-rshared "$MP"
mount --bind "$STATE" "$STATE"
mount --make-private "$STATE"
"""


def _fuse_at(path: str, pid: int | str = "self") -> bool:
    return any(m.mount_point == path and m.fstype == config.FSTYPE for m in read_mountinfo(pid))


@contextlib.contextmanager
def node_dir() -> Iterator[str]:
    """The node's /var/lib/lxcfs stand-in: a shared mount (what Bidirectional propagation needs)."""
    node = tempfile.mkdtemp(prefix="lxcfs-guard-node-")
    subprocess.run(["mount", "--bind", node, node], check=True)
    subprocess.run(["mount", "--make-shared", node], check=True)
    try:
        yield node
    finally:
        for _ in range(10):
            here = [m for m in read_mountinfo() if m.mount_point == node]
            if not here:
                break
            force_unmount(node)
        os.rmdir(node)


def _app_mounts(node: str):
    def customize(c) -> None:
        mounts = c.config["mounts"]
        for rel in config.DEFAULT_BINDS:  # pod-volumes.yaml: hostPath type File, readOnly: true
            mounts.append(
                {
                    "destination": config.target_for(rel),
                    "type": "bind",
                    "source": f"{node}/{rel}",
                    "options": ["rbind", "ro", "rprivate"],
                }
            )
        mounts.append(
            {
                "destination": "/var/lib/lxcfs",
                "type": "bind",
                "source": node,  # a hostPath directory
                "options": ["rbind", "ro", "rprivate"],
            }
        )

    return customize


def _ours(pid: int) -> list[tuple[str, str]]:
    return sorted((m.root, m.mount_point) for m in read_mountinfo(pid) if m.fstype == config.FSTYPE)


def test_pod_layout_file_and_directory_hostpaths_are_repaired() -> None:
    with node_dir() as node:
        os.environ["NODE"] = node
        try:
            pod = supervised(
                prefix="lxcfs-guard-client-", prepare=POD_NS, ready_at=node
            )  # ready only once the mount reached the node
            with (
                pod as g,
                container(customize=_app_mounts(node)) as app1,
                container(customize=_app_mounts(node), cpus="0-1") as app2,
            ):
                _run(g, node, [(app1, "65536|0|65536"), (app2, "65536|0-1|65536")])
        finally:
            os.environ.pop("NODE", None)


def _run(g, node: str, apps) -> None:
    for app, want in apps:
        assert app.exec("sh", "-c", PROBE).stdout.strip() == want
    before = {app.id: _ours(app.pid) for app, _ in apps}
    for app, _ in apps:
        assert ("/", "/var/lib/lxcfs") in before[app.id] and ("/proc/meminfo", "/proc/meminfo") in before[app.id]
    for round_ in range(3):
        old = g.daemon_pid()
        os.kill(old, signal.SIGKILL)
        for app, want in apps:
            t0, got = time.monotonic(), ""
            while time.monotonic() - t0 < 20:
                got = app.exec("sh", "-c", PROBE, check=False).stdout.strip()
                if got == want and g.daemon_pid() not in (None, old):
                    break
                time.sleep(0.05)
            # NEEDS-DIR-REPAIR: the third field reads through the directory hostPath (/var/lib/lxcfs)
            assert got == want, f"round {round_} {app.id}: {got!r}\n{g.log()}" + diagnose(
                g, lambda app=app: app.exec("sh", "-c", PROBE, check=False).stdout.strip(), in_guard_ns=True
            )
            assert _ours(app.pid) == before[app.id], "a mount was stacked or lost"
        assert _fuse_at(node), "the node's directory lost the live mount"
        # kubectl exec into the guard's pod; NEEDS-DIR-REPAIR (exit codes): 0 when all of ours is repaired
        check_remount_all(g, {mntns_of(app.pid) for app, _ in apps} | {mntns_of(g.proc.pid)}, in_guard_ns=True)
        for app, _ in apps:
            assert _ours(app.pid) == before[app.id]
