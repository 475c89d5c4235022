"""The VM really is a full cgroup v2 machine: every controller the tests rely on is present and delegated."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.v2

NEEDED = {"memory", "cpu", "cpuset", "io", "pids"}


def test_root_lists_and_delegates_the_controllers() -> None:
    with open("/sys/fs/cgroup/cgroup.controllers") as f:
        available = set(f.read().split())
    with open("/sys/fs/cgroup/cgroup.subtree_control") as f:
        enabled = set(f.read().split())
    assert available >= NEEDED, f"missing controllers: {NEEDED - available}"
    assert enabled >= NEEDED, f"not delegated to children: {NEEDED - enabled}"
