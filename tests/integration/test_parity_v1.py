"""LXCFS 7.0 parity on this cgroup v1 host, through the real mount and real cgroups: the CFS quota walked up
the tree, the Zswap lines, the pressure files (read, write, poll), and LXCFS's command line."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from tests.support.cgroups import TestCgroup, make_cgroup
from tests.support.daemon import serve

PY = sys.executable


def join_cmd(*groups: TestCgroup) -> str:
    return "; ".join(f"echo $$ > {p}/cgroup.procs" for cg in groups for p in cg.paths.values())


def read_in(group: TestCgroup, *paths: str) -> list[str]:
    code = "import sys, json; print(json.dumps([open(p).read() for p in sys.argv[1:]]))"
    r = subprocess.run(["sh", "-c", f'{join_cmd(group)}; exec "$0" "$@"', PY, "-c", code, *paths],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_quota_of_a_parent_cuts_every_cpu_file() -> None:
    """Quota on the parent only (0.5 CPU), the child's own is -1: the quota view shows 1 CPU everywhere."""
    parent = f"lxcfs-guard-quota-{uuid.uuid4().hex[:8]}"
    with serve(args=["--cpu-view", "quota", "--cache-ttl", "0"]) as d, \
            make_cgroup(name=parent, quota=(50000, 100000)), make_cgroup(name=f"{parent}/child", cpus="0-1") as child:
        with open(f"{child.paths['cpu']}/cpu.cfs_quota_us") as f:
            assert f.read().strip() == "-1"
        cpuinfo, stat, online = read_in(child, d.path("proc/cpuinfo"), d.path("proc/stat"),
                                        d.path("sys/devices/system/cpu/online"))
        assert cpuinfo.count("processor") == 1
        assert [line.split()[0] for line in stat.splitlines() if line.startswith("cpu")] == ["cpu", "cpu0"]
        assert online.strip() == "0"
