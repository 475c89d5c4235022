"""The cpu directory through the real mount: bound over /sys/devices/system/cpu in a private mount namespace
(what LXC's hook does), read by processes in two cgroups with different cpusets at the same time."""

from __future__ import annotations

import os
import shlex
import subprocess
import textwrap

import pytest

from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import serve

CPU = "/sys/devices/system/cpu"
ROUNDS = 60

# One line per round: the cpuN names listed, possible, present, online, offline, glibc's CONF and ONLN,
# whether cpu1 exists, cpu1's core_id (or "-").
READER = textwrap.dedent(f"""
    mount --bind "$MNT/sys/devices/system/cpu" {CPU} || exit 97
    i=0
    while [ $i -lt {ROUNDS} ]; do
      l=$(ls {CPU} | grep -E '^cpu[0-9]+$' | tr '\\n' ' ')
      c1=- ; [ -e {CPU}/cpu1 ] && c1=cpu1
      core=$(cat {CPU}/cpu1/topology/core_id 2>/dev/null || echo -)
      s="$l|$(cat {CPU}/possible)|$(cat {CPU}/present)|$(cat {CPU}/online)|$(cat {CPU}/offline)"
      echo "$s|$(getconf _NPROCESSORS_CONF)|$(getconf _NPROCESSORS_ONLN)|$c1|$core"
      i=$((i+1))
    done
""")


def _start_reader(cg, mountpoint: str) -> subprocess.Popen:
    join = "; ".join(f"echo $$ > {p}/cgroup.procs" for p in cg.paths.values())
    return subprocess.Popen(
        ["sh", "-c", f"{join}; exec unshare -m --propagation private sh -c {shlex.quote(READER)}"],
        env={**os.environ, "MNT": mountpoint},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _host(name: str) -> str:
    with open(f"{CPU}/{name}") as f:
        return f.read().strip()


pytestmark = pytest.mark.skipif(
    os.cpu_count() is None or os.cpu_count() < 2 or not os.path.isdir(f"{CPU}/cpu1"),
    reason="needs a host with cpu0 and cpu1",
)


def test_container_view_is_per_caller_under_concurrent_readers() -> None:
    """cpuset 0 and 0-1 read at once: each sees only its own cpuN, and glibc's CONF agrees with ONLN. The
    kernel's dentries are shared by both: a cached positive `cpu1` from the second reader would show up in
    the first one's walk if the entry were cached (entry_timeout > 0)."""
    core1 = _host("cpu1/topology/core_id")
    with (
        serve(args=["--cpu-dir-view", "container", "--cache-ttl", "0"]) as d,
        make_cgroup(cpus="0") as one,
        make_cgroup(cpus="0-1") as two,
    ):
        readers = [_start_reader(one, d.mountpoint), _start_reader(two, d.mountpoint)]
        outs = [r.communicate(timeout=120) for r in readers]
        for r, (_out, err) in zip(readers, outs, strict=True):
            assert r.returncode == 0, err
        lines_one, lines_two = (out.splitlines() for out, _ in outs)
        assert len(lines_one) == len(lines_two) == ROUNDS
        assert set(lines_one) == {"cpu0 |0|0|0||1|1|-|-"}, set(lines_one)
        assert set(lines_two) == {f"cpu0 cpu1 |0-1|0-1|0-1||2|2|cpu1|{core1}"}, set(lines_two)
        assert d.proc.poll() is None


def test_host_view_is_lxcfs_compatible() -> None:
    """The default: online is the caller's, the rest the host's (what LXCFS 5.x-7.0 serve)."""
    host_cpus = (
        " ".join(
            sorted((n for n in os.listdir(CPU) if n[3:].isdigit() and n.startswith("cpu")), key=lambda n: int(n[3:]))
        )
        + " "
    )
    possible, present = _host("possible"), _host("present")
    with serve(args=["--cache-ttl", "0"]) as d, make_cgroup(cpus="0") as one:
        r = _start_reader(one, d.mountpoint)
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, err
        lines = set(out.splitlines())
        conf = len(host_cpus.split())
        assert len(lines) == 1, lines
        fields = lines.pop().split("|")
        assert fields[:4] == [host_cpus, possible, present, "0"]
        assert fields[5:8] == [str(conf), "1", "cpu1"]


def test_lxc_hook_sees_uevent_and_stat_of_the_directory_answers() -> None:
    with serve() as d:
        top = d.path("sys/devices/system/cpu")
        r = subprocess.run(["sh", "-c", f'[ -d "{top}" ] && [ -f "{top}/uevent" ]'])
        assert r.returncode == 0
        assert os.readlink(f"{top}/cpu0/subsystem") == os.readlink(f"{CPU}/cpu0/subsystem")
        assert sorted(os.listdir(f"{top}/cpu0")) == sorted(os.listdir(f"{CPU}/cpu0"))
        r = subprocess.run(["df", d.mountpoint], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "" and "lxcfs-guard" in r.stdout, (r.stdout, r.stderr)
        st = os.statvfs(d.mountpoint)
        assert st.f_blocks > 0 and st.f_files > 0 and st.f_bavail == st.f_blocks
