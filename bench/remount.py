"""Benchmark: repairing N containers after the daemon restarts, the old way and ours, same containers,
same run.

Setup: a shared "tunnel" directory on the host holds the daemon's mountpoint; N light containers
(tests/support/containers.py: own mount namespace as a slave of the host, own memory cgroup, own root)
bind the seven proc files from it. Because the tunnel propagates into the containers, the old way can work.

Round (a), the plain loop Kubernetes/pouch scripts use: SIGKILL the daemon, start a new one, then per
container `nsenter -m -t PID sh -c 'umount F; mount --bind NEW F; ...'` for the seven files.
Round (b): SIGKILL and restart again, then `lxcfs-guard remount --all` (the whole command, interpreter
start-up included).
After each round every container must read its own MemTotal and have exactly its seven binds.

    .venv/bin/python bench/remount.py                # N = 10, 100, 500 with lxcfs-guard serve
    .venv/bin/python bench/remount.py -n 100 --lxcfs  # the same against Debian's LXCFS (fuse.lxcfs)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lxcfs_guard.kernel import syscalls as sc  # noqa: E402
from tests.support import containers as lc  # noqa: E402
from tests.support.daemon import LXCFS_GUARD, lxcfs_reference, serve  # noqa: E402

FILES = lc.FILES


@contextlib.contextmanager
def tunnel():
    """A shared mount on the host (its own bind), so mounts under it propagate into slave namespaces."""
    top = tempfile.mkdtemp(prefix="lxcfs-guard-tunnel-")
    sc.mount(top, top, None, sc.MS_BIND)
    sc.mount("none", top, None, sc.MS_SHARED)
    try:
        yield top
    finally:
        subprocess.run(["umount", "-R", "-l", top], check=False, capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


class Daemon:
    """The daemon under test on a fixed mountpoint, killed with SIGKILL and started again on demand."""

    def __init__(self, mountpoint: str, state_dir: str, use_lxcfs: bool) -> None:
        self.mountpoint, self.state_dir, self.use_lxcfs = mountpoint, state_dir, use_lxcfs
        self.fstype = "fuse.lxcfs" if use_lxcfs else "fuse.lxcfs-guard"
        self.ctx: contextlib.AbstractContextManager | None = None
        self.pid = 0

    def start(self) -> None:
        if self.use_lxcfs:
            self.ctx = lxcfs_reference(self.mountpoint)
            self.ctx.__enter__()
            self.pid = _lxcfs_pid(self.mountpoint)
        else:
            self.ctx = serve(self.mountpoint, self.state_dir)
            self.pid = self.ctx.__enter__().pid

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        assert self.ctx is not None
        self.ctx.__exit__(None, None, None)  # reaps it and detaches the dead mount (propagates to the slaves)
        self.ctx = None

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None


def _lxcfs_pid(mountpoint: str) -> int:
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
                if argv and argv[0].endswith(b"lxcfs") and mountpoint.encode() in argv:
                    return int(name)
    raise RuntimeError("lxcfs pid not found")


def check(cs: list[lc.LightContainer], fstype: str, expect_errno: int = 0) -> None:
    """Every container reads its own MemTotal (or fails with `expect_errno`) and has exactly 7 binds."""
    for c in cs:
        err, text = c.read("/proc/meminfo")
        if expect_errno:
            assert err == expect_errno, (c.pid, err)
        else:
            assert err == 0, (c.pid, os.strerror(err))
            assert lc.memtotal_kb(text) == c.limit // 1024, (c.pid, lc.memtotal_kb(text), c.limit)
        mounts = [line for line in c.mounts_of(fstype) if line.split()[3] != "/"]  # not the tunnel copy
        assert len(mounts) == len(FILES), (c.pid, mounts)


def nsenter_loop(cs: list[lc.LightContainer], mountpoint: str) -> float:
    """The old way, as the Kubernetes/pouch scripts do it; returns seconds."""
    t0 = time.perf_counter()
    for c in cs:
        script = "; ".join(f"umount {c.host_path(f)}; mount --bind {mountpoint}/{f} {c.host_path(f)}" for f in FILES)
        subprocess.run(["nsenter", "-m", "-t", str(c.pid), "sh", "-c", script], check=True)
    return time.perf_counter() - t0


def ours(mountpoint: str, state_dir: str, fstype: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([LXCFS_GUARD, "remount", "--all", "--mountpoint", mountpoint, "--state-dir", state_dir,
                           "--fstype", fstype], capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"remount failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took, proc.stdout.strip().splitlines()[-1]


def bench(n: int, use_lxcfs: bool) -> dict[str, float]:
    state_dir = tempfile.mkdtemp(prefix="lxcfs-guard-bench-state-")
    with tunnel() as top:
        mountpoint = os.path.join(top, "lxcfs")
        os.mkdir(mountpoint)
        d = Daemon(mountpoint, state_dir, use_lxcfs)
        d.start()
        try:
            with lc.light_containers(n, memory_mib=[64 + i % 200 for i in range(n)], bind_from=mountpoint,
                                     slave=True) as cs:
                check(cs, d.fstype)
                # (a) the nsenter loop
                d.kill()
                d.start()
                check(cs[:3], d.fstype, expect_errno=107)
                t_old = nsenter_loop(cs, mountpoint)
                check(cs, d.fstype)
                # (b) lxcfs-guard remount --all
                d.kill()
                d.start()
                check(cs[:3], d.fstype, expect_errno=107)
                t_new, summary = ours(mountpoint, state_dir, d.fstype)
                check(cs, d.fstype)
        finally:
            d.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    return {"n": n, "old_ms": t_old * 1000, "new_ms": t_new * 1000, "summary": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, action="append", help="containers (repeatable; default 10, 100, 500)")
    ap.add_argument("--lxcfs", action="store_true", help="guard Debian's LXCFS (fuse.lxcfs) instead of serve")
    args = ap.parse_args()
    daemon = "lxcfs 5.0.3 (fuse.lxcfs)" if args.lxcfs else "lxcfs-guard serve (fuse.lxcfs-guard)"
    print(f"remount after SIGKILL + restart of {daemon}; 7 binds per container; {os.cpu_count()} CPUs")
    print(f"{'N':>5} {'nsenter loop':>14} {'lxcfs-guard remount --all':>27} {'speed-up':>9} "
          f"{'ms/container old':>17} {'ms/container new':>17}")
    for n in args.n or [10, 100, 500]:
        r = bench(n, args.lxcfs)
        print(f"{n:>5} {r['old_ms']:>11.0f} ms {r['new_ms']:>24.1f} ms {r['old_ms'] / r['new_ms']:>8.1f}x "
              f"{r['old_ms'] / n:>17.2f} {r['new_ms'] / n:>17.3f}", flush=True)
        print(f"      ({r['summary']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
