"""The v2 tests run on a real cgroup v2 kernel: inside the VM (`make test-v2`) or on a v2-only host.

`make test` deselects them (`-m "not v2"`); run directly on a v1/hybrid host they skip with the reason below,
never silently. Inside the VM (LXCFS_GUARD_VM=1) a missing v2 hierarchy is an error, not a skip.
"""

from __future__ import annotations

import os

import pytest

from lxcfs_guard.testing.cgroups import is_v2_host

IN_VM = os.environ.get("LXCFS_GUARD_VM") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_v2_host():
        return
    if IN_VM:
        raise pytest.UsageError("LXCFS_GUARD_VM=1 but /sys/fs/cgroup is not a cgroup v2 root: the VM setup is broken")
    skip = pytest.mark.skip(
        reason="needs a cgroup v2-only host (/sys/fs/cgroup/cgroup.controllers); run `make test-v2` to boot one in qemu"
    )
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guard():
    """One `lxcfs-guard serve` for the v2 view tests (default cpuset view); stopped and unmounted at the end."""
    from lxcfs_guard.testing.daemon import serve

    with serve(timeout=120) as d:
        yield d


@pytest.fixture(scope="session")
def lxcfs():
    """Debian's LXCFS 5.0.3 (default options), the reference, on its own mountpoint."""
    from lxcfs_guard.testing.daemon import lxcfs_reference

    with lxcfs_reference(timeout=120) as mnt:
        yield mnt
