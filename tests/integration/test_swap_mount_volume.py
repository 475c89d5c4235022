"""remount.engine.swap_mount on a mountpoint that already carries a foreign mount: a DaemonSet's pod has its
hostPath volume (a bind with shared propagation) right on the mountpoint. The guard's mount must go on top
of that bind, so it propagates to the node; the old code slid it beneath the bind and detached the bind,
leaving the mount in the pod alone (found by tests/system/test_image.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator

from lxcfs_guard.kernel.procfs import mounts_at
from lxcfs_guard.remount.live import swap_mount
from lxcfs_guard.testing.procs import force_unmount


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


@contextlib.contextmanager
def volume() -> Iterator[tuple[str, str, str]]:
    """(node, pod, live): `pod` is a shared bind peer of `node`, as the pod's volume is of the node's path;
    `live` carries a tmpfs standing for a fresh instance's private mount."""
    top = tempfile.mkdtemp(prefix="lxcfs-guard-swapvol-")
    node, pod, live = (os.path.join(top, d) for d in ("node", "pod", "live"))
    for d in (node, pod, live):
        os.makedirs(d)
    try:
        mount("--bind", node, node)
        mount("--make-shared", node)
        mount("--bind", node, pod)
        mount("-t", "tmpfs", "-o", "size=1m", "lxcfs-guard-swapvol", live)
        with open(os.path.join(live, "marker"), "w") as f:
            f.write("served\n")
        yield node, pod, live
    finally:
        for d in (pod, live, node):
            force_unmount(d)
        if not any(mounts_at(d) for d in (node, pod, live)):
            subprocess.run(["rm", "-rf", top], check=False)


def test_the_mount_goes_on_top_of_a_foreign_volume_and_reaches_its_peers() -> None:
    with volume() as (node, pod, live):
        swap_mount(live, pod)
        stack = mounts_at(pod)
        assert len(stack) == 2 and stack[0].fstype != "tmpfs"  # the volume stays ...
        assert stack[-1].fstype == "tmpfs"  # ... with our mount on top of it
        with open(os.path.join(node, "marker")) as f:  # propagated to the node's side
            assert f.read() == "served\n"


def test_a_second_swap_replaces_only_our_own_mount() -> None:
    with volume() as (node, pod, live):
        swap_mount(live, pod)
        first = mounts_at(pod)[-1].mount_id
        swap_mount(live, pod)  # a restart: the new instance's mount replaces ours, the volume stays
        stack = mounts_at(pod)
        assert first not in {m.mount_id for m in stack}
        assert len(stack) == 2 and stack[0].fstype != "tmpfs"
        with open(os.path.join(node, "marker")) as f:
            assert f.read() == "served\n"
