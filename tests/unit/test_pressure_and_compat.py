"""Pure parts of the PSI files and of LXCFS's command line: the kernel's trigger rules, the PSI view, the
poll answers and the multi-worker hand-over (fh specs in a shared store, triggers per process), and how
LXCFS 7.0's flags map onto serve."""

from __future__ import annotations

import argparse
import errno
import os
import select
import subprocess
import sys

import pyfuse3
import pytest

from lxcfs_guard.cgroup import V1Reader, V2Reader
from lxcfs_guard.cgroup.pressure import pressure_file
from lxcfs_guard.fs import lxcfs_compat
from lxcfs_guard.fs.daemon import configure_serve, fuse_options
from lxcfs_guard.fs.pressure import DEFAULT_POLLMASK, NO_TRIGGER_MASK, LocalStore, Pressure, parse_trigger
from lxcfs_guard.fs.views.pressure import parse_pressure, render_pressure

PSI = "some avg10=1.50 avg60=0.20 avg300=0.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n"


@pytest.mark.parametrize(
    ("buf", "privileged", "want"),
    [
        (b"some 150000 1000000", True, b"some 150000 1000000\0"),
        (b"full 20000 2000000\n", False, b"full 20000 2000000\0"),
        (b"  some 1 2000000\0garbage", False, b"some 1 2000000\0"),
    ],
)
def test_trigger_accepted_and_canonical(buf: bytes, privileged: bool, want: bytes) -> None:
    assert parse_trigger(buf, privileged) == want


@pytest.mark.parametrize(
    ("buf", "privileged"),
    [
        (b"some 150000 1000000", False),  # an opener without CAP_SYS_RESOURCE: 2 s steps only
        (b"some 0 2000000", True),
        (b"some 3000000 2000000", True),
        (b"some 1 0", True),
        (b"some 1 10000001", True),
        (b"avg 1 2000000", True),
        (b"some x 2000000", True),
        (b"", True),
        (b"some 4294967296 2000000", True),
    ],
)
def test_trigger_rejected_like_the_kernel(buf: bytes, privileged: bool) -> None:
    with pytest.raises(pyfuse3.FUSEError) as e:
        parse_trigger(buf, privileged)
    assert e.value.errno == errno.EINVAL


def test_pressure_view_passes_psi_and_nothing_else() -> None:
    assert render_pressure(PSI) == PSI
    assert render_pressure(PSI.rstrip("\n")) == PSI
    assert parse_pressure(PSI)["some"]["total"] == 123456
    for bad in (None, "", "MemTotal: 1 kB\n", "some avg10=x\n"):
        assert render_pressure(bad) is None


def test_pressure_file_v2_own_v1_unified_else_host(tmp_path) -> None:
    (tmp_path / "v2/a/b").mkdir(parents=True)
    (tmp_path / "v2/cgroup.controllers").write_text("cpu\n")
    (tmp_path / "v2/a/b/memory.pressure").write_text(PSI)
    r2 = V2Reader(str(tmp_path / "v2"))
    assert pressure_file(r2, r2.parse_proc_cgroup("0::/a/b\n"), "memory") == f"{tmp_path}/v2/a/b/memory.pressure"
    assert pressure_file(r2, r2.parse_proc_cgroup("0::/gone\n"), "memory") == "/proc/pressure/memory"
    (tmp_path / "v1/unified/ct").mkdir(parents=True)
    (tmp_path / "v1/memory/ct").mkdir(parents=True)
    (tmp_path / "v1/unified/ct/cpu.pressure").write_text(PSI)
    r1 = V1Reader(str(tmp_path / "v1"))
    ref = r1.parse_proc_cgroup("4:memory:/ct\n0::/ct/init.scope\n")
    assert ref.get("unified") == "/ct" and ref.get("memory") == "/ct"
    assert pressure_file(r1, ref, "cpu", host="/h") == f"{tmp_path}/v1/unified/ct/cpu.pressure"
    assert pressure_file(r1, r1.parse_proc_cgroup("4:memory:/ct\n"), "cpu", host="/h") == "/h/cpu"


class FakeHandle:
    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


def fifo_pressure(tmp_path, store=None) -> tuple[Pressure, str]:
    """A Pressure whose 'cgroup pressure file' is a FIFO: writable, and pollable for POLLPRI never (so the
    event path is driven by hand) - enough to check the bookkeeping without a kernel trigger."""
    path = str(tmp_path / "memory")  # the "host" pressure file a caller without a view gets
    os.mkfifo(path)
    keep = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # keeps the FIFO open so writes do not block
    p = Pressure(
        V2Reader(str(tmp_path)), enabled=True, store=store, proc=str(tmp_path), host_dir=str(tmp_path), watch=False
    )
    p._test_keep = keep  # type: ignore[attr-defined]
    return p, path


def test_poll_answers_without_ever_enosys(tmp_path) -> None:
    p, path = fifo_pressure(tmp_path)
    assert p.poll(99, None) == DEFAULT_POLLMASK  # not a pressure file: the default mask
    p.opened(1, "proc/pressure/memory", None, os.getpid())
    assert p.store.get(1).path == path
    assert p.poll(1, None) == NO_TRIGGER_MASK  # no trigger yet: POLLERR|POLLPRI, as the kernel says
    with pytest.raises(pyfuse3.FUSEError) as e:
        p.write(1, b"some 150000 1000000")  # this test process has no CAP_SYS_RESOURCE here or it has:
    assert e.value.errno == errno.EINVAL or p.store.get(1).privileged
    assert p.write(1, b"some 100000 2000000\n") == 20
    with pytest.raises(pyfuse3.FUSEError) as e:
        p.write(1, b"some 100000 2000000\n")
    assert e.value.errno == errno.EBUSY
    h = FakeHandle()
    assert p.poll(1, h) == DEFAULT_POLLMASK  # nothing fired: the handle is kept
    p._fired(1)  # what the watcher does on EPOLLPRI
    assert h.notified == 1
    assert p.poll(1, None) == DEFAULT_POLLMASK | select.POLLPRI  # reported once
    assert p.poll(1, None) == DEFAULT_POLLMASK
    p.release(1)
    assert p.store.get(1) is None and not p._fds


def test_another_worker_creates_its_own_trigger_and_sweeps_it(tmp_path) -> None:
    """Two Pressure objects sharing one store stand for two worker processes of one mount."""
    store = LocalStore()
    a, path = fifo_pressure(tmp_path, store)
    b = Pressure(a.reader, enabled=True, store=store, proc=str(tmp_path), host_dir=str(tmp_path), watch=False)
    a.opened(7, "proc/pressure/memory", None, os.getpid())
    a.write(7, b"some 100000 2000000")
    assert 7 in a._fds and 7 not in b._fds
    assert b.poll(7, FakeHandle()) == DEFAULT_POLLMASK  # worker b: lazily its own trigger from the spec
    assert 7 in b._fds
    a._fired(7)  # fired in worker a: the pending flag is in the shared spec ...
    assert b.poll(7, None) == DEFAULT_POLLMASK | select.POLLPRI  # ... so worker b reports it
    a.release(7)  # RELEASE reached worker a only
    assert 7 in b._fds
    b.sweep()  # worker b learns the fh is gone
    assert not b._fds
    with pytest.raises(pyfuse3.FUSEError) as e:
        a.write(8, b"some 1 2000000")  # a handle that is no pressure file: read-only
    assert e.value.errno == errno.EROFS


def test_disabled_triggers_refuse_writes_and_keep_ro(tmp_path) -> None:
    p, _ = fifo_pressure(tmp_path)
    p.enabled = False
    assert not p.writable("proc/pressure/memory") and not p.writable("proc/meminfo")
    p.opened(1, "proc/pressure/memory", None, os.getpid())
    with pytest.raises(pyfuse3.FUSEError) as e:
        p.write(1, b"some 1 2000000")
    assert e.value.errno == errno.EINVAL  # LXCFS without --enable-psi-poll


def serve_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_serve(parser)
    return parser.parse_args(argv)


def test_lxcfs_flags_map_onto_serve(tmp_path, capsys) -> None:
    args = serve_args(
        [
            "-u",
            "-z",
            "--enable-cfs",
            "-d",
            "-o",
            "allow_other,default_permissions",
            "-p",
            str(tmp_path / "x.pid"),
            "-s",
            "--enable-pidfd",
        ]
    )
    try:
        assert lxcfs_compat.apply(args) is None
        assert (args.swap, args.zswap, args.cpu_view, args.debug) == (False, False, "quota", True)
        assert args.loadavg and not args.psi_triggers  # serve's own defaults stay: triggers are opt-in
        assert lxcfs_compat.mount_options(fuse_options(), args) == fuse_options() | {"default_permissions"}
        err = capsys.readouterr().err
        assert "--enable-pidfd" in err and "-s:" in err and "allow_other" in err
        # a second instance on the same pid file is refused, as LXCFS does (record locks are per process)
        code = (
            "import argparse, sys; from lxcfs_guard.fs import lxcfs_compat, daemon; p = argparse.ArgumentParser();"
            "daemon.configure_serve(p); sys.exit(lxcfs_compat.apply(p.parse_args(['-p', sys.argv[1]])) or 0)"
        )
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.pid")], capture_output=True, text=True)
        assert r.returncode == 1 and "already locked" in r.stderr
        # (read only now: closing any fd of the file drops a POSIX record lock, as LXCFS's fcntl lock too)
        assert (tmp_path / "x.pid").read_text() == f"{os.getpid()}\n"
    finally:
        lxcfs_compat.remove_pidfile(args)
    assert not (tmp_path / "x.pid").exists()


def test_drop_in_keeps_lxcfs_defaults(tmp_path) -> None:
    args = serve_args(["--runtime-dir", str(tmp_path)])
    args.lxcfs_drop_in = True
    try:
        assert lxcfs_compat.apply(args) is None
        assert not args.loadavg and not args.psi_triggers and args.cpu_view == "cpuset"
        assert (tmp_path / "lxcfs.pid").exists()
        assert "ro" in lxcfs_compat.mount_options(fuse_options(), args)
    finally:
        lxcfs_compat.remove_pidfile(args)
    both = serve_args(["-d", "-f"])
    assert lxcfs_compat.apply(both) == 1  # LXCFS refuses -d with -f too
