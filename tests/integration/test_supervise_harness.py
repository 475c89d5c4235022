"""The one supervise harness cleans up what it made and nothing else: on a mountpoint outside its tempdir
(the global /var/lib/lxcfs shape) it takes down only mounts of our fstype, never one it found there, and
no process of supervise's tree is left. (prepare/ready_at/in_guard_ns: test_clients_pod.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from lxcfs_guard.config import FSTYPE
from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.testing.procs import force_unmount
from lxcfs_guard.testing.supervise import descendants, supervised


def _at(path: str) -> list[str]:
    return [m.fstype for m in read_mountinfo() if m.mount_point == path]


def test_global_mountpoint_keeps_a_foreign_mount():
    where = tempfile.mkdtemp(prefix="lxcfs-guard-global-")
    subprocess.run(["mount", "-t", "tmpfs", "foreign", where], check=True)
    try:
        with supervised("--no-standby", mountpoint=where, prefix="lxcfs-guard-harness-") as s:
            assert _at(where)[-1] == FSTYPE
            top, pid = s.top, s.proc.pid if s.proc else 0
            tree = descendants(pid)
            assert tree
        assert _at(where) == ["tmpfs"]
        assert not os.path.exists(top)
        assert not [p for p in [pid, *tree] if os.path.exists(f"/proc/{p}")]
    finally:
        force_unmount(where)
        shutil.rmtree(where, ignore_errors=True)
