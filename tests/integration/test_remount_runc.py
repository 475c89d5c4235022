"""A real runc container (busybox rootfs, 64 MiB limit, pivot_root, its own pid namespace and procfs):
`attach` binds the files, SIGKILL of the daemon breaks them, `remount` repairs them in place."""

from __future__ import annotations

import json

import pytest

from lxcfs_guard.kernel.procfs import read_mountinfo
from tests.integration.remount_helpers import assert_exit_code, cli, daemon, remount_json
from tests.support.runc import container

MEMTOTAL_64M = ["MemTotal:", "65536", "kB"]


def _ours(pid: int, fstype: str) -> list[tuple[str, str]]:
    return sorted((m.mount_point, m.mount_options) for m in read_mountinfo(pid) if m.fstype == fstype)


@pytest.mark.parametrize("which", ["--id", "--all"])
def test_runc_container_is_repaired_in_place(which: str) -> None:
    with daemon() as d, container(memory=64 << 20, cpus="0") as c:
        proc = cli(d, "attach", "--id", c.id, "--pid", str(c.pid), "--json")
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["repaired"]) == 8  # 7 proc files + cpu/online
        assert c.read("/proc/meminfo").splitlines()[0].split() == MEMTOTAL_64M
        before = _ours(c.pid, d.fstype)
        assert len(before) == 8

        d.kill()
        broken = c.exec("head", "-c", "100", "/proc/meminfo", check=False)
        assert broken.returncode != 0 and "not connected" in broken.stderr
        d.start()
        rc, report = remount_json(d, *([which, c.id] if which == "--id" else [which]))
        assert_exit_code(rc, report, {c.pid})
        (ns,) = [ns for ns in report["namespaces"] if ns["pid"] == c.pid]
        assert ns["id"] == c.id and ns["action"] == "repaired" and len(ns["repaired"]) == 8
        assert c.read("/proc/meminfo").splitlines()[0].split() == MEMTOTAL_64M
        assert c.read("/sys/devices/system/cpu/online").strip() == "0"
        assert _ours(c.pid, d.fstype) == before

        rc, report = remount_json(d, "--id", c.id)
        assert rc == 0 and [ns["action"] for ns in report["namespaces"]] == ["already_live"]
        assert _ours(c.pid, d.fstype) == before
