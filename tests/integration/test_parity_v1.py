"""LXCFS 7.0 parity on this cgroup v1 host, through the real mount and real cgroups: the CFS quota walked up
the tree, the Zswap lines, the pressure files (read, write, poll), and LXCFS's command line."""

from __future__ import annotations

import json
import os
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


# -- pressure files -------------------------------------------------------------------------------------

def busy(group: TestCgroup, seconds: float, n: int = 3) -> subprocess.Popen:
    """`n` busy loops inside `group` (cpuset 0): they wait for each other, so the cgroup has CPU pressure."""
    loop = f"timeout {seconds} sh -c 'while :; do :; done'"
    return subprocess.Popen(["sh", "-c", f"{join_cmd(group)}; " + " & ".join([loop] * n) + " & wait"])


def psi_total(text: str, kind: str = "some") -> int:
    for line in text.splitlines():
        if line.startswith(kind + " "):
            return int(line.rsplit("total=", 1)[1])
    raise AssertionError(text)


def test_pressure_files_are_the_containers_own_in_psi_format() -> None:
    """A process of a container (new pid namespace whose init is in the cgroup) reads its cgroup's PSI: on this
    hybrid host the v2 (unified) cgroup's cpu/io/memory.pressure, not the host's /proc/pressure."""
    with serve(args=["--cache-ttl", "0"]) as d, make_cgroup(cpus="0", unified=True) as cg:
        load = busy(cg, 1.5)
        load.wait(30)
        own = cg.paths["unified"]
        files = [d.path(f"proc/pressure/{r}") for r in ("cpu", "io", "memory")]
        before = open(f"{own}/cpu.pressure").read()
        code = "import sys, json; print(json.dumps([open(p).read() for p in sys.argv[1:]]))"
        r = subprocess.run(["sh", "-c", f'{join_cmd(cg)}; exec unshare --pid --fork --mount-proc "$0" "$@"',
                            PY, "-c", code, *files], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        cpu, io, memory = json.loads(r.stdout)
        after = open(f"{own}/cpu.pressure").read()
        for text in (cpu, io, memory):
            assert [line.split()[0] for line in text.splitlines()] == ["some", "full"]
            assert all(line.split()[1].startswith("avg10=") and "total=" in line for line in text.splitlines())
        assert psi_total(before) > 0  # the busy loops waited on each other
        assert psi_total(before) <= psi_total(cpu) <= psi_total(after)
        assert psi_total(cpu) < psi_total(open("/proc/pressure/cpu").read())  # not the host's
        assert psi_total(memory) == psi_total(open(f"{own}/memory.pressure").read())


def test_trigger_written_through_the_file_fires_and_poll_returns() -> None:
    """Write a trigger on /proc/pressure/cpu as a process of the cgroup, put the cgroup under CPU pressure:
    poll() returns POLLPRI. A second trigger on the same fd is EBUSY, a fd without one polls POLLERR|POLLPRI."""
    code = r"""
import os, select, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
os.write(fd, b"some 50000 2000000\0")  # 50 ms of stall in a 2 s window (no CAP_SYS_RESOURCE: 2 s steps)
try:
    os.write(fd, b"some 50000 2000000\0")
    print("second-write-accepted")
except OSError as e:
    print("second", e.errno)
bare = os.open(path, os.O_RDONLY)
p = select.poll(); p.register(bare, select.POLLPRI)
print("bare", p.poll(0)[0][1])
sys.stdout.flush()
os.read(0, 1)  # the test starts the load now
p = select.poll(); p.register(fd, select.POLLPRI)
t = time.monotonic()
events = p.poll(15000)
print("poll", events[0][1] if events else 0, round(time.monotonic() - t, 2))
"""
    import select

    with serve(args=["--cache-ttl", "0"]) as d, make_cgroup(cpus="0", unified=True) as cg:
        proc = subprocess.Popen(["sh", "-c", f'{join_cmd(cg)}; exec "$0" "$@"', PY, "-c", code,
                                 d.path("proc/pressure/cpu")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().split() == ["second", "16"]  # EBUSY, as the kernel answers
            bare = int(proc.stdout.readline().split()[1])
            assert bare & select.POLLERR and bare & select.POLLPRI
            load = busy(cg, 6)
            proc.stdin.write("g")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=30)
            load.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        word, revents, _took = out.split()
        assert word == "poll" and int(revents) & select.POLLPRI, (out, err)


def test_only_pressure_files_take_writes() -> None:
    """Without `ro` on the superblock, every write but a trigger is still refused: EROFS."""
    import errno

    with serve() as d:
        for rel in ("proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime", "sys/devices/system/cpu/online"):
            for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_TRUNC):
                try:
                    os.close(os.open(d.path(rel), flags))
                    raise AssertionError(f"{rel} opened with {flags:#o}")
                except OSError as e:
                    assert e.errno == errno.EROFS, (rel, e)
            for call in (lambda p: os.truncate(p, 0), lambda p: os.chmod(p, 0o666), lambda p: os.unlink(p)):
                try:
                    call(d.path(rel))
                    raise AssertionError(rel)
                except OSError as e:
                    assert e.errno in (errno.EROFS, errno.EPERM), (rel, e)
            assert not os.access(d.path(rel), os.W_OK)
        for make in (lambda: open(d.path("proc/new"), "w"), lambda: os.mkdir(d.path("proc/dir"))):
            try:
                make()
                raise AssertionError("created")
            except OSError as e:
                assert e.errno == errno.EROFS
        # `echo ... > file` (O_TRUNC) works on a pressure file; nonsense is EINVAL, as from the kernel
        r = subprocess.run(["sh", "-c", 'echo "some 100000 2000000" > "$0"', d.path("proc/pressure/memory")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        for nonsense in (b"nonsense\n", b"some 0 2000000\n", b"full 3000000 2000000\n", b"some 1 20000000\n"):
            fd = os.open(d.path("proc/pressure/memory"), os.O_WRONLY)
            try:
                os.write(fd, nonsense)
                raise AssertionError(nonsense)
            except OSError as e:
                assert e.errno == errno.EINVAL, (nonsense, e)
            finally:
                os.close(fd)
        assert os.access(d.path("proc/pressure/memory"), os.W_OK)
    with serve(args=["--disable-psi-poll"]) as d:
        try:
            os.close(os.open(d.path("proc/pressure/memory"), os.O_WRONLY))
            raise AssertionError("writable with --disable-psi-poll")
        except OSError as e:
            assert e.errno == errno.EROFS
        with open("/proc/self/mountinfo") as f:
            line = next(line for line in f if f" {d.mountpoint} " in line)
        assert line.split()[5].split(",")[0] == "ro"


# -- meminfo zswap on v1 ------------------------------------------------------------------------------------

def test_meminfo_zswap_lines_read_zero_on_v1() -> None:
    """v1 keeps no per-cgroup zswap figures: the lines stay where the kernel prints them and read 0."""
    with serve(args=["--cache-ttl", "0"]) as d, make_cgroup(memory=64 << 20) as cg:
        (text,) = read_in(cg, d.path("proc/meminfo"))
        keys = [line.split(":")[0] for line in text.splitlines()]
        host_keys = [line.split(":")[0] for line in open("/proc/meminfo").read().splitlines()]
        assert keys == host_keys
        assert keys[keys.index("SwapFree") + 1 : keys.index("SwapFree") + 3] == ["Zswap", "Zswapped"]
        values = {line.split(":")[0]: line.split()[1] for line in text.splitlines()}
        assert values["Zswap"] == "0" and values["Zswapped"] == "0" and values["MemTotal"] == "65536"
