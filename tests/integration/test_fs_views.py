"""What a limited process sees, through lxcfs-guard and through Debian's LXCFS 5.0.3 at the same moment.

One cgroup: 64 MiB, cpuset 0, CFS quota 50000/100000. The reads run in a process inside it (or inside a new
pid namespace whose init is inside it) and read each file through both mounts back to back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from lxcfs_guard.testing import cgroups
from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import Daemon, lxcfs_reference, serve

PY = sys.executable
FILES = [
    "proc/meminfo",
    "proc/cpuinfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
    "proc/loadavg",
    "proc/diskstats",
    "sys/devices/system/cpu/online",
]

READER = textwrap.dedent("""
    import json, sys
    ours, ref = sys.argv[1], sys.argv[2]
    out = {}
    for name in sys.argv[3:]:
        pair = []
        for root in (ours, ref):
            with open(root + "/" + name) as f:
                pair.append(f.read())
        out[name] = pair
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def mounts() -> Iterator[tuple[Daemon, str]]:
    with serve(args=["--cache-ttl", "0"]) as d, lxcfs_reference() as ref:
        yield d, ref


@pytest.fixture(scope="module")
def limited() -> Iterator[cgroups.TestCgroup]:
    with make_cgroup(memory=64 * 2**20, cpus="0", quota=(50000, 100000)) as cg:
        yield cg


def join_cmd(cg: cgroups.TestCgroup) -> str:
    return "; ".join(f"echo $$ > {p}/cgroup.procs" for p in cg.paths.values())


def read_both(cg: cgroups.TestCgroup, ours: str, ref: str, files: list[str] = FILES, pidns: bool = False) -> dict:
    cmd = f'{join_cmd(cg)}; exec "$0" -c "$1" "$2" "$3" ' + " ".join(files)
    argv = ["sh", "-c", cmd, PY, READER, ours, ref]
    if pidns:
        # the shell joins the cgroup first, then becomes init of a new pid namespace
        argv = [
            "sh",
            "-c",
            f'{join_cmd(cg)}; exec unshare --pid --fork --mount-proc "$0" -c "$1" "$2" "$3" ' + " ".join(files),
            PY,
            READER,
            ours,
            ref,
        ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {k: tuple(v) for k, v in json.loads(r.stdout).items()}


def meminfo(text: str) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()}


def test_limited_process_sees_its_limits(mounts, limited) -> None:
    d, ref = mounts
    got = read_both(limited, d.mountpoint, ref)
    ours = {k: v[0] for k, v in got.items()}
    assert ours["proc/meminfo"].splitlines()[0] == "MemTotal:          65536 kB"
    assert sum(1 for line in ours["proc/cpuinfo"].splitlines() if line.startswith("processor")) == 1
    assert ours["sys/devices/system/cpu/online"] == "0\n"
    assert [line.split()[0] for line in ours["proc/stat"].splitlines() if line.startswith("cpu")] == ["cpu", "cpu0"]
    with open("/proc/meminfo") as f:
        assert f.readline() != ours["proc/meminfo"].splitlines()[0] + "\n"  # not the host's


def test_agrees_with_lxcfs_field_by_field(mounts, limited) -> None:
    d, ref = mounts
    got = read_both(limited, d.mountpoint, ref)
    # meminfo: same keys in the same order, the limit-derived numbers equal or within 2 MiB
    ours, theirs = got["proc/meminfo"]
    assert [line.split(":")[0] for line in ours.splitlines()] == [line.split(":")[0] for line in theirs.splitlines()]
    o, t = meminfo(ours), meminfo(theirs)
    for key in ("MemTotal", "SwapTotal", "Buffers", "SwapCached"):
        assert o[key] == t[key], key
    for key in ("MemFree", "MemAvailable", "Cached", "SwapFree"):
        assert abs(o[key] - t[key]) <= 2048, (key, o[key], t[key])
    # cpuinfo: the same processor blocks
    ours, theirs = got["proc/cpuinfo"]

    def count(s: str) -> int:
        return sum(1 for line in s.splitlines() if line.startswith("processor"))

    assert count(ours) == count(theirs) == 1
    assert [line for line in ours.splitlines() if not line.startswith("cpu MHz")] == [
        line for line in theirs.splitlines() if not line.startswith("cpu MHz")
    ]
    # stat: the same cpu lines (idle moves with the clock: within 1 s of ticks) and the same other keys
    ours, theirs = got["proc/stat"]
    ocpu = [line.split() for line in ours.splitlines() if line.startswith("cpu")]
    tcpu = [line.split() for line in theirs.splitlines() if line.startswith("cpu")]
    assert [c[0] for c in ocpu] == [c[0] for c in tcpu]
    for oc, tc in zip(ocpu, tcpu, strict=True):
        assert len(oc) == len(tc)
        # user and system are the reader's cgroup's own and may tick once between the two reads
        diffs = [abs(int(x) - int(y)) for i, (x, y) in enumerate(zip(oc[1:], tc[1:], strict=True)) if i != 3]
        assert max(diffs) <= 1 and sum(diffs) <= 2, (oc, tc)
        assert abs(int(oc[4]) - int(tc[4])) <= 100
    okeys = [line.split()[0] for line in ours.splitlines() if not line.startswith("cpu")]
    tkeys = [line.split()[0] for line in theirs.splitlines() if not line.startswith("cpu")]
    assert okeys == tkeys
    # swaps, cpu/online, uptime
    ours, theirs = got["proc/swaps"]
    assert len(ours.splitlines()) == len(theirs.splitlines())
    assert got["sys/devices/system/cpu/online"][0] == got["sys/devices/system/cpu/online"][1] == "0\n"
    ours, theirs = got["proc/uptime"]
    assert abs(float(ours.split()[0]) - float(theirs.split()[0])) < 2.0


def test_new_pid_namespace_reads_uptime_near_zero(mounts, limited) -> None:
    d, ref = mounts
    got = read_both(limited, d.mountpoint, ref, ["proc/uptime", "proc/meminfo"], pidns=True)
    ours, theirs = got["proc/uptime"]
    up, idle = (float(x) for x in ours.split())
    assert 0 <= up < 2.0 and 0 <= idle <= up + 0.01
    assert abs(up - float(theirs.split()[0])) < 2.0
    # the init of that namespace is in the limited cgroup: its view
    assert meminfo(got["proc/meminfo"][0])["MemTotal"] == 65536 == meminfo(got["proc/meminfo"][1])["MemTotal"]


def test_container_view_is_the_init_cgroup_not_the_callers(mounts, limited) -> None:
    """Like LXCFS: a process that entered the container but sits in another cgroup still sees the limits of
    the container's init (here 64 MiB), not its own (128 MiB)."""
    d, ref = mounts
    with make_cgroup(memory=128 * 2**20) as other:
        code = textwrap.dedent(f"""
            import os, subprocess, sys
            # we are init of a new pid namespace, inside the 64 MiB cgroup; move a child to the 128 MiB one
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(w); os.read(r, 1)
                out = []
                for root in sys.argv[1:3]:
                    with open(root + "/proc/meminfo") as f:
                        out.append(f.readline().split()[1])
                with open("/proc/self/cgroup") as f:
                    own = [l for l in f if ":memory:" in l][0].strip()
                print(*out, own)
                os._exit(0)
            with open("{other.paths["memory"]}/cgroup.procs", "w") as f:
                f.write(str(pid))  # cgroup.procs takes pids of the writer's pid namespace
            os.close(r); os.write(w, b"x")
            os.waitpid(pid, 0)
        """)
        argv = [
            "sh",
            "-c",
            f'{join_cmd(limited)}; exec unshare --pid --fork "$0" -c "$1" "$2" "$3"',
            PY,
            code,
            d.mountpoint,
            ref,
        ]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        ours, theirs, own = r.stdout.split()
        assert own.endswith(other.name)
        assert ours == theirs == "65536"


def test_cpu_view_quota_cuts_to_ceil_quota_over_period() -> None:
    with (
        serve(args=["--cpu-view", "quota", "--cache-ttl", "0"]) as d,
        make_cgroup(cpus="0-1", quota=(50000, 100000)) as cg,
        make_cgroup(cpus="0-1") as free,
    ):
        code = "import sys; print(open(sys.argv[1]).read().count('processor'), open(sys.argv[2]).read().strip())"
        for group, want_cpus in ((cg, 1), (free, len(os.sched_getaffinity(0) & {0, 1}))):
            r = subprocess.run(
                [
                    "sh",
                    "-c",
                    f'{join_cmd(group)}; exec "$0" -c "$1" "$2" "$3"',
                    PY,
                    code,
                    d.path("proc/cpuinfo"),
                    d.path("sys/devices/system/cpu/online"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, r.stderr
            n, online = r.stdout.split()
            assert int(n) == want_cpus
            assert online == ("0" if want_cpus == 1 else f"0-{want_cpus - 1}")


def test_loadavg_follows_a_busy_cgroup() -> None:
    with serve(args=["--loadavg-interval", "0.2", "--cache-ttl", "0"]) as d, make_cgroup() as cg:
        busy = subprocess.Popen(["sh", "-c", f"{join_cmd(cg)}; exec {PY} -c 'while True: pass'"])
        try:
            read = ["sh", "-c", f'{join_cmd(cg)}; exec cat "$0"', d.path("proc/loadavg")]
            first = subprocess.run(read, capture_output=True, text=True, timeout=30).stdout.split()
            assert first[:3] == ["0.00", "0.00", "0.00"]
            assert int(first[3].split("/")[1]) >= 1
            time.sleep(3)  # ~15 samples of one running task
            later = subprocess.run(read, capture_output=True, text=True, timeout=30).stdout.split()
            assert float(later[0]) > 0.3 and float(later[0]) > float(later[1]) > 0
            assert later[4] == first[4] or int(later[4]) > 0  # the host's last pid field
        finally:
            busy.kill()
            busy.wait()
