"""cgroup v1 and v2 readers behind one interface; the cgroup root is a parameter so fixture trees work.

reader = open_reader()                 # or open_reader("/path/to/fixture", version=2)
ref = reader.ref_for_pid(pid)          # CgroupRef: controller -> path
reader.memory(ref), reader.cpu(ref), reader.cpu_usage(ref), reader.io(ref), reader.procs(ref)
"""

from __future__ import annotations

import os

from lxcfs_guard.cgroup.base import DEFAULT_ROOT, CgroupGone, CgroupReader
from lxcfs_guard.cgroup.facts import CgroupRef, CpuFacts, CpuUsage, IoStat, MemoryFacts
from lxcfs_guard.cgroup.v1 import V1Reader
from lxcfs_guard.cgroup.v2 import V2Reader

__all__ = [
    "CgroupGone",
    "CgroupReader",
    "CgroupRef",
    "CpuFacts",
    "CpuUsage",
    "IoStat",
    "MemoryFacts",
    "V1Reader",
    "V2Reader",
    "detect_version",
    "open_reader",
]


def detect_version(root: str = DEFAULT_ROOT) -> int:
    """2 when `root` is a unified hierarchy with controllers, else 1 (hybrid hosts keep controllers in v1)."""
    ctrl_file = os.path.join(root, "cgroup.controllers")
    if os.path.exists(ctrl_file):
        return 2
    return 1


def open_reader(root: str = DEFAULT_ROOT, version: int | None = None) -> CgroupReader:
    version = version or detect_version(root)
    return V2Reader(root) if version == 2 else V1Reader(root)
