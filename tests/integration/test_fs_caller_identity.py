"""Whose view a real caller gets when the kernel recycles what identifies a container (issue 11 M2), and when
a cgroup's name is not UTF-8 (issue 11 L7): real daemon, real pid namespaces, real v1/v2 cgroups."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import serve

MiB = 1 << 20

# In its own pid namespace (unshare --pid --fork: the child is the namespace's init), print the namespace's
# inode and the MemTotal line read through the mount, then exit: the namespace dies with it.
_CONTAINER = (
    'for p in "$@"; do echo $$ > "$p"; done; exec unshare --pid --fork sh -c '
    '"stat -L -c %i /proc/self/ns/pid; grep MemTotal: $MEMINFO"'
)


def _run_container(cg, meminfo: str) -> tuple[int, int]:
    """(pid-namespace inode, MemTotal kB) seen by a one-shot container in cgroup `cg`."""
    procs = [f"{p}/cgroup.procs" for p in cg.paths.values()]
    r = subprocess.run(
        ["sh", "-c", _CONTAINER, "sh", *procs],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "MEMINFO": meminfo},
    )
    assert r.returncode == 0, r.stderr
    ino, line = r.stdout.splitlines()
    return int(ino), int(line.split()[1])


def test_a_new_container_with_a_dead_ones_pid_namespace_number_reads_its_own_limit() -> None:
    """The kernel gives a dead pid namespace's inode number to the next one at once; the caller cache is
    keyed by that number. A container started right after another exited must still read its own limit."""
    with serve() as d, make_cgroup(memory=100 * MiB) as small, make_cgroup(memory=300 * MiB) as big:
        meminfo = d.path("proc/meminfo")
        # The kernel does recycle the number here (shown through /proc/meminfo, which holds no reference:
        # the daemon may legitimately keep a dead namespace's number from being reused).
        # Other work on the machine takes numbers too, so it is not every time.
        reused = 0
        # A freed number goes back a little later (RCU), and the lowest free one is handed out: so pause
        # before each start, else the previous pair's numbers are not back yet and the pair gets two others.
        for _ in range(20):
            time.sleep(0.1)
            ino_a = _run_container(small, "/proc/meminfo")[0]
            time.sleep(0.1)
            reused += ino_a == _run_container(big, "/proc/meminfo")[0]
        if not reused:  # a busy machine took every freed number first: the scenario could not be staged
            pytest.skip("the kernel reused no pid-namespace number in 20 tries")
        wrong = []
        for _ in range(20):
            time.sleep(0.1)
            _, kb_a = _run_container(small, meminfo)
            time.sleep(0.1)  # the issue saw it with the second container started 0.05-0.7 s after the first
            _, kb_b = _run_container(big, meminfo)
            if kb_a != 100 * 1024 or kb_b != 300 * 1024:
                wrong.append((kb_a, kb_b))
        assert not wrong, f"{len(wrong)} of 20 pairs read another container's MemTotal: {wrong}"


def test_a_cgroup_whose_name_is_not_utf8_gets_its_own_view() -> None:
    """A cgroup directory name is bytes; one with \\xff in it must not silently get the host's view."""
    name = "lxcfs-guard-test-\udcff-" + uuid.uuid4().hex[:8]  # os.fsencode: b"...\xff..."
    assert b"\xff" in os.fsencode(name)
    with serve() as d, make_cgroup(name=name, memory=123 * MiB) as cg:
        procs = [f"{p}/cgroup.procs" for p in cg.paths.values()]
        for container in (False, True):
            body = f"grep MemTotal: {d.path('proc/meminfo')}"
            if container:
                body = f'exec unshare --pid --fork sh -c "{body}"'
            r = subprocess.run(
                ["sh", "-c", 'for p in "$@"; do echo $$ > "$p"; done; ' + body, "sh", *procs],
                capture_output=True,
                timeout=20,
            )
            assert r.returncode == 0, r.stderr
            assert int(r.stdout.split()[1]) == 123 * 1024, (container, r.stdout)
        assert "Traceback" not in d.log()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-v"])
