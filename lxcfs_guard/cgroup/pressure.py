"""Where a cgroup's PSI files are: `{resource}.pressure` in its cgroup v2 directory.

The kernel accounts pressure per cgroup of the *default* (v2) hierarchy only. On a pure v2 host that is the
container's cgroup. On a hybrid v1 host (this one: cgroup2 at /sys/fs/cgroup/unified, no controllers) every
process still sits in a v2 cgroup too ("0::/path" in /proc/PID/cgroup), and the kernel keeps
cpu/io/memory.pressure for it there, controllers or not: so a container placed in its own unified cgroup
(runc and systemd do that on hybrid hosts) has its own honest figures; one left at "0::/" gets the root
cgroup's, which the kernel fills from the system-wide figures, i.e. the host's. Upstream v1 hierarchies have
no pressure files (some vendor kernels add them behind a boot option; we do not read those). Where no v2
directory is known, the host's /proc/pressure file is the answer, as LXCFS falls back to it.
"""

from __future__ import annotations

import os

from lxcfs_guard.cgroup.base import CgroupReader, join
from lxcfs_guard.cgroup.facts import CgroupRef

RESOURCES = ("cpu", "io", "memory")
HOST_PRESSURE = "/proc/pressure"


def v2_dir(reader: CgroupReader, ref: CgroupRef) -> str | None:
    """The caller's cgroup directory in the default hierarchy, or None (pure v1 host, unknown path)."""
    if reader.version == 2:
        rel = ref.get("")
        return None if rel is None else join(reader.root, rel)
    base = getattr(reader, "controller_dir", lambda c: None)("unified")
    rel = ref.get("unified")
    if base is None or rel is None:
        return None
    return join(base, rel)


def pressure_file(reader: CgroupReader, ref: CgroupRef, resource: str, host: str = HOST_PRESSURE) -> str:
    """The file whose text is this caller's /proc/pressure/`resource`: the cgroup's own where it exists."""
    if resource not in RESOURCES:
        raise ValueError(resource)
    d = v2_dir(reader, ref)
    if d is not None:
        path = f"{d}/{resource}.pressure"
        if os.path.exists(path):
            return path
    return f"{host}/{resource}"
