"""Real runc containers for tests (busybox rootfs, memory limit, cpuset, hooks, unique ids, always deleted).

The implementation lives in lxcfs_guard/oci/runc.py because `make demo` uses it as well.
"""

from lxcfs_guard.oci.runc import (  # noqa: F401
    RUNC,
    Container,
    MiB,
    base_spec,
    container,
    guard_hooks,
    hook_entry,
    make_config,
    new_id,
    rootfs_template,
)
