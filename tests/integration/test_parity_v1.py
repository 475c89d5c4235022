"""LXCFS 7.0 parity on this cgroup v1 host, through the real mount and real cgroups: the CFS quota walked up
the tree, the Zswap lines, the pressure files (read, write, poll), and LXCFS's command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from lxcfs_guard.testing.cgroups import TestCgroup, make_cgroup
from lxcfs_guard.testing.daemon import serve

PY = sys.executable


def join_cmd(*groups: TestCgroup) -> str:
    return "; ".join(f"echo $$ > {p}/cgroup.procs" for cg in groups for p in cg.paths.values())


def read_in(group: TestCgroup, *paths: str) -> list[str]:
    code = "import sys, json; print(json.dumps([open(p).read() for p in sys.argv[1:]]))"
    r = subprocess.run(
        ["sh", "-c", f'{join_cmd(group)}; exec "$0" "$@"', PY, "-c", code, *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_quota_of_a_parent_cuts_every_cpu_file() -> None:
    """Quota on the parent only (0.5 CPU), the child's own is -1: the quota view shows 1 CPU everywhere."""
    parent = f"lxcfs-guard-quota-{uuid.uuid4().hex[:8]}"
    with (
        serve(args=["--cpu-view", "quota", "--cache-ttl", "0"]) as d,
        make_cgroup(name=parent, quota=(50000, 100000)),
        make_cgroup(name=f"{parent}/child", cpus="0-1") as child,
    ):
        with open(f"{child.paths['cpu']}/cpu.cfs_quota_us") as f:
            assert f.read().strip() == "-1"
        cpuinfo, stat, online = read_in(
            child, d.path("proc/cpuinfo"), d.path("proc/stat"), d.path("sys/devices/system/cpu/online")
        )
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
        before = Path(f"{own}/cpu.pressure").read_text()
        code = "import sys, json; print(json.dumps([open(p).read() for p in sys.argv[1:]]))"
        r = subprocess.run(
            ["sh", "-c", f'{join_cmd(cg)}; exec unshare --pid --fork --mount-proc "$0" "$@"', PY, "-c", code, *files],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        cpu, io, memory = json.loads(r.stdout)
        after = Path(f"{own}/cpu.pressure").read_text()
        for text in (cpu, io, memory):
            assert [line.split()[0] for line in text.splitlines()] == ["some", "full"]
            assert all(line.split()[1].startswith("avg10=") and "total=" in line for line in text.splitlines())
        assert psi_total(before) > 0  # the busy loops waited on each other
        assert psi_total(before) <= psi_total(cpu) <= psi_total(after)
        assert psi_total(cpu) < psi_total(Path("/proc/pressure/cpu").read_text())  # not the host's
        assert psi_total(memory) == psi_total(Path(f"{own}/memory.pressure").read_text())


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

    with serve(args=["--cache-ttl", "0", "--enable-psi-poll"]) as d, make_cgroup(cpus="0", unified=True) as cg:
        proc = subprocess.Popen(
            ["sh", "-c", f'{join_cmd(cg)}; exec "$0" "$@"', PY, "-c", code, d.path("proc/pressure/cpu")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
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
    """Without `ro` on the superblock (--enable-psi-poll), every write but a trigger is still refused: EROFS;
    by default (triggers off, as in LXCFS 7.0) the mount is `ro` and pressure files are read-only too."""
    import errno

    with serve(args=["--enable-psi-poll"]) as d:
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
        for make in (
            lambda: os.close(os.open(d.path("proc/new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)),
            lambda: os.mkdir(d.path("proc/dir")),
        ):
            try:
                make()
                raise AssertionError("created")
            except OSError as e:
                assert e.errno == errno.EROFS
        # `echo ... > file` (O_TRUNC) works on a pressure file; nonsense is EINVAL, as from the kernel
        r = subprocess.run(
            ["sh", "-c", 'echo "some 100000 2000000" > "$0"', d.path("proc/pressure/memory")],
            capture_output=True,
            text=True,
        )
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
    with serve() as d:
        try:
            os.close(os.open(d.path("proc/pressure/memory"), os.O_WRONLY))
            raise AssertionError("writable without --enable-psi-poll")
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
        host_keys = [line.split(":")[0] for line in Path("/proc/meminfo").read_text().splitlines()]
        assert keys == host_keys
        assert keys[keys.index("SwapFree") + 1 : keys.index("SwapFree") + 3] == ["Zswap", "Zswapped"]
        values = {line.split(":")[0]: line.split()[1] for line in text.splitlines()}
        assert values["Zswap"] == "0" and values["Zswapped"] == "0" and values["MemTotal"] == "65536"


# -- LXCFS's command line -------------------------------------------------------------------------------------

LXCFS_FLAGS = (
    "--enable-loadavg",
    "--disable-swap",
    "--disable-zswap",
    "--enable-cfs",
    "--enable-psi-poll",
    "--pidfile",
    "--foreground",
    "--runtime-dir",
    "--enable-pidfd",
    "-o",
    "-d",
    "-s",
    "-u",
    "-z",
    "-l",
)


def test_serve_help_lists_lxcfs_flags() -> None:
    from lxcfs_guard.testing.daemon import LXCFS_GUARD

    out = subprocess.run([LXCFS_GUARD, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    assert "LXCFS 7.0 flags" in out
    for flag in LXCFS_FLAGS:
        assert f" {flag}" in out, flag


def exec_start_lines() -> dict[str, list[str]]:
    """ExecStart= of Debian's lxcfs.service (the lxcfs package) and of upstream's (LXCFS 7.0.0's tarball)."""
    import tarfile

    from tests.support.lxcfs7 import tarball

    units = {"debian": Path("/lib/systemd/system/lxcfs.service").read_text()}
    with tarfile.open(tarball()) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("config/init/systemd/lxcfs.service.in"))
        units["upstream"] = tf.extractfile(member).read().decode().replace("{{LXCFSTARGETDIR}}", "/var/lib/lxcfs")
    out = {}
    for name, text in units.items():
        line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
        out[name] = line.split("=", 1)[1].split()
    return out


def test_lxcfs_service_exec_start_runs_us_unchanged(tmp_path) -> None:
    """The exact ExecStart= argv of both unit files, with /usr/bin/lxcfs pointing at lxcfs-guard: mounts
    /var/lib/lxcfs, writes /run/lxcfs.pid, survives ExecReload's SIGUSR1, stops cleanly on SIGTERM."""
    import fcntl
    import signal
    import time

    from lxcfs_guard.testing.daemon import LXCFS_GUARD, _answers, _mount_fstype
    from lxcfs_guard.testing.procs import force_unmount, stop, wait_for

    link = tmp_path / "lxcfs"
    link.symlink_to(LXCFS_GUARD)
    lines = exec_start_lines()
    assert lines["debian"] == ["/usr/bin/lxcfs", "/var/lib/lxcfs"], lines
    assert lines["upstream"] == ["/usr/bin/lxcfs", "/var/lib/lxcfs"], lines
    with open("/run/lxcfs-guard-varlib.lock", "w") as lock:
        deadline = time.monotonic() + 300
        while True:  # the one global /var/lib/lxcfs: one test at a time across the machine
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "/run/lxcfs-guard-varlib.lock held for 300 s"
                time.sleep(0.5)
        assert not os.path.exists("/run/lxcfs.pid"), "a host lxcfs holds /run/lxcfs.pid"
        for name, argv in lines.items():
            os.makedirs(argv[1], exist_ok=True)  # upstream's ExecStartPre=/bin/mkdir -p
            assert _mount_fstype(argv[1]) is None, f"{argv[1]} is already mounted"
            proc = subprocess.Popen(
                [str(link), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                wait_for(
                    lambda argv=argv: (
                        _mount_fstype(argv[1]) == "fuse.lxcfs-guard" and _answers(f"{argv[1]}/proc/meminfo")
                    ),
                    30,
                    0.1,
                    f"{name} ExecStart to mount",
                )
                assert Path("/run/lxcfs.pid").read_text().strip() == str(proc.pid)
                os.kill(proc.pid, signal.SIGUSR1)  # ExecReload=/bin/kill -USR1 $MAINPID
                time.sleep(0.3)
                assert proc.poll() is None and _answers(f"{argv[1]}/proc/meminfo")
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=30)
                assert proc.returncode == 0, out
                assert b"SIGUSR1" in out
                assert _mount_fstype(argv[1]) is None and not os.path.exists("/run/lxcfs.pid")
            finally:
                if proc.poll() is None:
                    stop(proc)
                force_unmount(argv[1])


def test_runc_container_reads_its_own_pressure_through_the_oci_hook() -> None:
    """A real runc container (runc puts it in its own v2 cgroup on this hybrid host too), the pressure files
    asked for by annotation: /proc/pressure/* inside it are its cgroup's, in PSI format."""
    from lxcfs_guard.testing.supervise import supervised
    from tests.support.runc import container

    with (
        supervised() as guard,
        container(
            memory=64 << 20, cpus="0", hooks=guard.hooks(), annotations={"io.lxcfs-guard.files": "cpu,io,memory"}
        ) as c,
    ):
        own = f"/sys/fs/cgroup/unified/{c.id}"
        assert Path(f"/proc/{c.pid}/cgroup").read_text().splitlines()[-1] == f"0::/{c.id}"
        c.exec(
            "sh",
            "-c",
            "timeout 1 sh -c 'while :; do :; done' & timeout 1 sh -c 'while :; do :; done' & wait",
            timeout=30,
        )
        before = Path(f"{own}/cpu.pressure").read_text()
        inside = {r: c.read(f"/proc/pressure/{r}") for r in ("cpu", "io", "memory")}
        after = Path(f"{own}/cpu.pressure").read_text()
        for text in inside.values():
            assert [line.split()[0] for line in text.splitlines()] == ["some", "full"], text
        assert 0 < psi_total(before) <= psi_total(inside["cpu"]) <= psi_total(after)
        assert psi_total(inside["cpu"]) < psi_total(Path("/proc/pressure/cpu").read_text())
