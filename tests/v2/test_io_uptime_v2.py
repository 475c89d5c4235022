"""/proc/diskstats from io.stat (real I/O on the VM's scratch disk) and /proc/uptime of a new pid namespace."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lxcfs_guard.testing.cgroups import make_cgroup
from tests.v2.util import cgfile, diskstats, io_stat, read_in

pytestmark = pytest.mark.v2
SCRATCH = os.environ.get("LXCFS_GUARD_VM_SCRATCH", "/dev/vda")


def _scratch_dev() -> tuple[str, str]:
    if not os.path.exists(SCRATCH):
        pytest.fail(f"the VM's scratch disk {SCRATCH} is missing (tests/vm/run.py attaches it)")
    rdev = os.stat(SCRATCH).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}", os.path.basename(SCRATCH)


def test_diskstats_follows_io_stat(guard) -> None:
    dev, name = _scratch_dev()
    with make_cgroup() as cg, make_cgroup() as quiet:

        def join() -> None:
            Path(f"{cg.paths['unified']}/cgroup.procs").write_text(str(os.getpid()))

        # 1 MiB written and 512 KiB read with O_DIRECT: real block I/O, charged to this cgroup.
        subprocess.run(["dd", "if=/dev/zero", f"of={SCRATCH}", "bs=64k", "count=16", "oflag=direct"],
                       check=True, capture_output=True, preexec_fn=join)  # fmt: skip
        subprocess.run(["dd", f"if={SCRATCH}", "of=/dev/null", "bs=64k", "count=8", "iflag=direct"],
                       check=True, capture_output=True, preexec_fn=join)  # fmt: skip
        io = io_stat(cgfile(cg, "io.stat"))[dev]
        assert io["wbytes"] == 1024 * 1024 and io["rbytes"] == 512 * 1024, io
        (text,) = read_in(cg, guard.path("proc/diskstats"))
        ours = diskstats(text)
        assert set(ours) == {name}, text  # only the devices this cgroup used
        row = ours[name]
        assert (row[0], row[1]) == tuple(int(x) for x in dev.split(":"))
        assert row[2] == io["rios"] and row[4] == io["rbytes"] // 512, row
        assert row[6] == io["wios"] and row[8] == io["wbytes"] // 512 == 2048, row

        # A cgroup that did no I/O sees no disk at all, though the host's diskstats has the scratch disk busy.
        assert name in diskstats(Path("/proc/diskstats").read_text())
        (text,) = read_in(quiet, guard.path("proc/diskstats"))
        assert name not in diskstats(text), text


def test_uptime_of_a_new_pid_namespace(guard, lxcfs) -> None:
    with make_cgroup() as cg:
        # sh becomes pid 1 of a fresh pid namespace, sleeps, then execs the reader (still pid 1).
        prefix = ["unshare", "--pid", "--fork", "sh", "-c", 'sleep 2; exec "$@"', "sh"]
        t0 = time.monotonic()
        ours, ref = read_in(cg, guard.path("proc/uptime"), f"{lxcfs}/proc/uptime", prefix=prefix)
        elapsed = time.monotonic() - t0
    host_up = float(Path("/proc/uptime").read_text().split()[0])
    up = float(ours.split()[0])
    assert 2.0 <= up <= elapsed + 0.5, (up, elapsed)
    assert host_up > up + 1, (host_up, up)
    # ours is read first, LXCFS's right after by another cat: under TCG with 4 vCPUs on 2 host cores that
    # fork+exec alone has taken over a second, so LXCFS's figure may be later by that much, never earlier
    assert -0.5 < float(ref.split()[0]) - up < 2.0, (ours, ref)
