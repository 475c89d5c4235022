"""The mount itself: shape, refusals, start-up over a dead mount, clean shutdown, readiness, and many
readers at once. Every test runs a real `lxcfs-guard serve` on a temp dir."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from lxcfs_guard.kernel.files import DEAD_ERRNOS
from lxcfs_guard.kernel.procfs import MountInfo, mounts_at
from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import serve
from lxcfs_guard.testing.procs import force_unmount, is_mounted, stop

PY = sys.executable


def top_mount(path: str) -> MountInfo:
    mounts = mounts_at(path)
    assert mounts, f"{path} not mounted"
    return mounts[-1]


def test_mount_shape_tree_and_state_file() -> None:
    with serve() as d:
        m = top_mount(d.mountpoint)
        assert m.fstype == "fuse.lxcfs-guard" and m.source == "lxcfs-guard"
        assert m.read_only  # PSI triggers are opt-in (--enable-psi-poll): without them nothing takes writes
        assert "allow_other" in m.super_options.split(",")
        assert sorted(os.listdir(d.mountpoint)) == ["proc", "sys"]
        assert sorted(os.listdir(d.path("proc"))) == sorted(
            ["cpuinfo", "diskstats", "loadavg", "meminfo", "stat", "swaps", "uptime", "slabinfo", "pressure"]
        )
        # the whole cpu directory, like LXCFS 5.x-7.0: LXC's hook binds it whole when `uevent` is a file in it
        assert sorted(os.listdir(d.path("sys/devices/system/cpu"))) == sorted(os.listdir("/sys/devices/system/cpu"))
        assert os.path.isfile(d.path("sys/devices/system/cpu/uevent"))
        for name in (
            "proc/meminfo",
            "proc/cpuinfo",
            "proc/stat",
            "proc/uptime",
            "proc/loadavg",
            "proc/swaps",
            "proc/diskstats",
            "proc/slabinfo",
            "sys/devices/system/cpu/online",
        ):
            with open(d.path(name)) as f:
                assert f.read(), name
        with open(os.path.join(d.state_dir, "serve", f"{d.pid}.json")) as f:
            state = json.load(f)
        assert state["pid"] == d.pid and state["mountpoint"] == d.mountpoint and state["started"] > 0


def test_writes_are_refused_and_unknown_names_are_enoent() -> None:
    with serve() as d:
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
            with pytest.raises(OSError) as e:
                os.open(d.path("proc/meminfo"), flags)
            assert e.value.errno in (errno.EROFS, errno.EACCES)
        for call in (
            lambda: os.mkdir(d.path("proc/x")),
            lambda: os.unlink(d.path("proc/meminfo")),
            lambda: os.rename(d.path("proc/meminfo"), d.path("proc/m2")),
            lambda: os.open(d.path("proc/new"), os.O_CREAT | os.O_WRONLY),
            lambda: os.truncate(d.path("proc/stat"), 0),
            lambda: os.chmod(d.path("proc/stat"), 0o777),
        ):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        for name in (
            "proc/nope",
            "nope",
            "sys/devices/system/cpu/nope",
            "sys/devices/system/cpu/cpu0/nope",
            "proc/meminfo/x",
        ):
            with pytest.raises(OSError) as e:
                os.stat(d.path(name))
            assert e.value.errno in (errno.ENOENT, errno.ENOTDIR)
        with open(d.path("proc/meminfo")) as f:  # still serving after all that
            assert f.read().startswith("MemTotal:")
        # the holder rendered every view before it mounted and forked its workers (daemon.warm_up)
        log = d.log()
        assert "views warmed up in" in log and log.index("views warmed up in") < log.index("mounted ")


def test_sigterm_and_sigint_unmount_cleanly() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with serve() as d:
            state = os.path.join(d.state_dir, "serve", f"{d.pid}.json")
            os.kill(d.pid, sig)
            assert d.proc.wait(10) == 0, d.log()
            assert not is_mounted(d.mountpoint)
            assert not os.path.exists(state)


def test_dead_mount_on_the_mountpoint_is_detached_first() -> None:
    mnt = tempfile.mkdtemp(prefix="lxcfs-guard-dead-")
    try:
        with serve(mountpoint=mnt) as first:
            os.kill(first.pid, signal.SIGKILL)
            first.proc.wait(10)
            # its workers die a moment after it (PR_SET_PDEATHSIG): a request queued until the last of
            # them is gone is ended with ECONNABORTED, every later one gets ENOTCONN
            seen = []
            deadline = time.monotonic() + 10
            while not seen or (seen[-1] != errno.ENOTCONN and time.monotonic() < deadline):
                with pytest.raises(OSError) as e:
                    os.stat(os.path.join(mnt, "proc"))
                seen.append(e.value.errno)
            assert set(seen) <= DEAD_ERRNOS and seen[-1] == errno.ENOTCONN, seen
            with serve(mountpoint=mnt) as second:
                assert second.pid != first.pid
                with open(second.path("proc/meminfo")) as f:
                    assert f.read().startswith("MemTotal:")
                # the dead connection is gone from the mount table, only the live one is left
                assert len(mounts_at(mnt)) == 1
                assert "detaching the dead mount" in second.log()
    finally:
        force_unmount(mnt)
        os.rmdir(mnt)


def test_ready_is_notified_once_the_mount_answers() -> None:
    sock_dir = tempfile.mkdtemp(prefix="lxcfs-guard-notify-")
    sock_path = os.path.join(sock_dir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    try:
        mnt = tempfile.mkdtemp(prefix="lxcfs-guard-mnt-")
        state = tempfile.mkdtemp(prefix="lxcfs-guard-state-")
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        proc = subprocess.Popen(
            [os.path.join(os.path.dirname(PY), "lxcfs-guard"), "serve", "--mountpoint", mnt, "--state-dir", state],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            msg = sock.recv(4096).decode()
            assert "READY=1" in msg
            # READY came after the mount answered: a read works now, and the state file is there
            with open(os.path.join(mnt, "proc", "meminfo")) as f:
                assert f.read().startswith("MemTotal:")
            assert os.path.exists(os.path.join(state, "serve", f"{proc.pid}.json"))
        finally:
            stop(proc)
            force_unmount(mnt)
            os.rmdir(mnt)
            subprocess.run(["rm", "-rf", state])
    finally:
        sock.close()
        subprocess.run(["rm", "-rf", sock_dir])


def test_many_concurrent_readers_all_get_whole_files() -> None:
    code = textwrap.dedent("""
        import os, sys
        path, n = sys.argv[1], int(sys.argv[2])
        first = None
        for _ in range(n):
            with open(path, "rb") as f:
                data = f.read()
            assert data.startswith(b"MemTotal:") and data.endswith(b"kB\\n"), data[-40:]
            first = first or len(data.splitlines())
            assert len(data.splitlines()) == first
        print("ok")
    """)
    with serve() as d:
        procs = [
            subprocess.Popen([PY, "-c", code, d.path("proc/meminfo"), "150"], stdout=subprocess.PIPE, text=True)
            for _ in range(24)
        ]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert outs == ["ok\n"] * 24
        assert d.proc.poll() is None


def test_a_cgroup_that_vanishes_gives_the_host_file() -> None:
    # The reader reads once (its view is now cached for ~1 s), leaves its cgroup, removes it, and reads
    # again at once: the cached view points at a cgroup that no longer exists.
    code = textwrap.dedent("""
        import os, sys
        mnt, dirs = sys.argv[1], sys.argv[2:]
        with open(mnt + "/proc/meminfo") as f:
            before = f.readline()
        for d in dirs:
            with open(os.path.dirname(d) + "/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
        for d in dirs:
            os.rmdir(d)
        for name in ("proc/meminfo", "proc/stat", "proc/cpuinfo", "proc/uptime", "proc/swaps", "proc/diskstats",
                     "proc/loadavg", "sys/devices/system/cpu/online"):
            with open(mnt + "/" + name) as f:
                assert f.read(), name
        with open(mnt + "/proc/meminfo") as f:
            after = f.readline()
        print(before.split()[1], after.split()[1])
    """)
    with open("/proc/meminfo") as f:
        host_total = f.readline().split()[1]
    with serve(args=["--cache-ttl", "0"]) as d, make_cgroup(memory=64 * 2**20, cpus="0") as cg:
        join = "; ".join(f"echo $$ > {p}/cgroup.procs" for p in cg.paths.values())
        r = subprocess.run(
            ["sh", "-c", f'{join}; exec "$0" -c "$1" "$2" ' + " ".join(cg.paths.values()), PY, code, d.mountpoint],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        before, after = r.stdout.split()
        assert before == "65536"
        assert after == host_total
        assert d.proc.poll() is None


def test_small_reads_and_seeks_see_one_consistent_snapshot() -> None:
    with serve(args=["--cache-ttl", "0"]) as d:
        fd = os.open(d.path("proc/stat"), os.O_RDONLY)
        try:
            chunks = []
            while True:
                b = os.read(fd, 7)  # many READ requests at growing offsets, one render behind them
                if not b:
                    break
                chunks.append(b)
            whole = b"".join(chunks)
            assert whole.startswith(b"cpu  ") and whole.endswith(b"\n")
            assert os.pread(fd, 5, 0) == b"cpu  "
            assert os.pread(fd, 100, len(whole)) == b""
            assert os.pread(fd, 10**6, 0) == whole  # the same bytes, though the clock moved on
        finally:
            os.close(fd)


def _sendfile_all(path: str) -> bytes:
    """Copy a file the way busybox `cat` does: sendfile(2), which stops at i_size."""
    with open(path, "rb") as src, tempfile.TemporaryFile() as dst:
        while os.sendfile(dst.fileno(), src.fileno(), None, 1 << 20):
            pass
        dst.seek(0)
        return dst.read()


def test_sendfile_readers_get_whole_files_like_read() -> None:
    """sendfile/splice go through the page cache and stop at i_size; a file that reports size 0 reads as
    empty to busybox `cat`. A limited caller (shorter content) and the host (longer) both get whole files."""
    with serve() as d, make_cgroup(memory=64 << 20, cpus="0") as cg:
        for rel in ("proc/cpuinfo", "proc/meminfo", "proc/stat", "sys/devices/system/cpu/online"):
            with open(d.path(rel), "rb") as f:
                by_read = f.read()
            by_sendfile = _sendfile_all(d.path(rel))
            # two opens, two renders (on any worker, each with its own cache): /proc/stat's counters may
            # move on between them, so the shape is compared, not the numbers
            first_sf, first_rd = by_sendfile.splitlines()[0].split(), by_read.splitlines()[0].split()
            assert first_sf[0] == first_rd[0] and len(first_sf) == len(first_rd), rel
            assert len(by_sendfile.splitlines()) == len(by_read.splitlines()), rel
        code = (
            "import os,sys,tempfile\n"
            "src=os.open(sys.argv[1],os.O_RDONLY); dst=tempfile.TemporaryFile()\n"
            "while os.sendfile(dst.fileno(),src,None,1<<20): pass\n"
            "dst.seek(0); sys.stdout.write(dst.read().decode())\n"
        )
        p = subprocess.Popen(
            [
                PY,
                "-c",
                "import sys,os; sys.stdin.read(1); os.execv(sys.argv[1], sys.argv[1:])",
                PY,
                "-c",
                code,
                d.path("proc/meminfo"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        cg.add(p.pid)
        out = p.communicate("x", timeout=30)[0]
        assert out.splitlines()[0].split() == ["MemTotal:", "65536", "kB"]
        assert out.endswith("kB\n") and len(out.splitlines()) > 20


def test_the_connection_takes_many_background_requests_and_the_host_keeps_its_mount_table() -> None:
    """RELEASE is a background request; at the kernel's default limit of 12 a busy node's releases fell
    behind its opens and the snapshot arena filled (ENFILE at N=1000 in bench/fleet.py). serve raises the
    limit through fusectl from a private mount namespace: the host's mount table does not change."""
    fusectl_before = is_mounted("/sys/fs/fuse/connections")
    with serve() as d:
        dev = os.stat(d.path("proc")).st_dev
        conn = (os.major(dev) << 20) | os.minor(dev)
        script = (
            "mount --make-rprivate / && mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null; "
            f"cat /sys/fs/fuse/connections/{conn}/max_background"
        )
        r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=30)
        assert r.stdout.split() == ["1024"], r
        assert is_mounted("/sys/fs/fuse/connections") == fusectl_before
