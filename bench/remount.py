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
import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import lxcfs_guard
from lxcfs_guard.testing import containers as lc
from lxcfs_guard.testing.daemon import LXCFS_GUARD
from lxcfs_guard.testing.restartable import Restartable

FILES = lc.FILES


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


def restart(d: Restartable, cs: list[lc.LightContainer]) -> None:
    """SIGKILL the daemon and start it again; the containers must now read ENOTCONN."""
    for _attempt in range(5):
        d.kill()
        d.start()
        try:
            check(cs[:3], d.fstype, expect_errno=107)
            return
        except AssertionError:  # another test run's supervisor repaired them first: again
            continue
    raise RuntimeError("another test run kept repairing our containers first")


def nsenter_loop(cs: list[lc.LightContainer], mountpoint: str) -> float:
    """The old way, as the Kubernetes/pouch scripts do it; returns seconds."""
    t0 = time.perf_counter()
    for c in cs:
        script = "; ".join(f"umount {c.host_path(f)}; mount --bind {mountpoint}/{f} {c.host_path(f)}" for f in FILES)
        subprocess.run(["nsenter", "-m", "-t", str(c.pid), "sh", "-c", script], check=True)
    return time.perf_counter() - t0


def ours(mountpoint: str, state_dir: str, fstype: str, pids: set[int]) -> tuple[float, str] | None:
    """`lxcfs-guard remount --all`, timed from outside (interpreter start-up included). None if another
    test run on this shared host repaired some of our containers first (its supervisor repairs every
    dead connection it finds): the round is then not a measurement and is repeated."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            LXCFS_GUARD,
            "remount",
            "--all",
            "--json",
            "--mountpoint",
            mountpoint,
            "--state-dir",
            state_dir,
            "--fstype",
            fstype,
        ],
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - t0
    report = json.loads(proc.stdout)
    repaired = {ns["pid"] for ns in report["namespaces"] if ns["action"] == "repaired"}
    if not pids <= repaired:
        return None
    others = len(report["namespaces"]) - len(pids)
    note = f"; plus {others} namespace(s) of other test runs on this host" if others else ""
    phases = ", ".join(f"{k} {v:.1f}" for k, v in report["phases_ms"].items())
    return took, (
        f"{len(pids)} repaired in {report['duration_ms']:.1f} ms inside the command ({phases}), "
        f"via {report['mode']}{note}"
    )


def bench(n: int, use_lxcfs: bool) -> dict:
    state_dir = tempfile.mkdtemp(prefix="lxcfs-guard-bench-state-")
    try:
        return _bench(n, use_lxcfs, state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def _bench(n: int, use_lxcfs: bool, state_dir: str) -> dict:
    with lc.tunnel() as top:
        mountpoint = os.path.join(top, "lxcfs")
        os.mkdir(mountpoint)
        with (
            Restartable(mountpoint, state_dir, lxcfs=use_lxcfs) as d,
            lc.light_containers(n, memory_mib=[64 + i % 200 for i in range(n)], bind_from=mountpoint, slave=True) as cs,
        ):
            check(cs, d.fstype)
            restart(d, cs)  # (a) the nsenter loop
            t_old = nsenter_loop(cs, mountpoint)
            check(cs, d.fstype)
            for _attempt in range(5):  # (b) lxcfs-guard remount --all
                restart(d, cs)
                result = ours(mountpoint, state_dir, d.fstype, {c.pid for c in cs})
                check(cs, d.fstype)
                if result is not None:
                    break
            else:
                raise RuntimeError("another test run kept repairing our containers first")
            t_new, summary = result
    return {"n": n, "old_ms": t_old * 1000, "new_ms": t_new * 1000, "summary": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, action="append", help="containers (repeatable; default 10, 100, 500)")
    ap.add_argument("--lxcfs", action="store_true", help="guard Debian's LXCFS (fuse.lxcfs) instead of serve")
    args = ap.parse_args()
    # An installed package has its bytecode; a checkout run with PYTHONDONTWRITEBYTECODE may not.
    compileall.compile_dir(os.path.dirname(lxcfs_guard.__file__), quiet=1)
    daemon = "lxcfs 5.0.3 (fuse.lxcfs)" if args.lxcfs else "lxcfs-guard serve (fuse.lxcfs-guard)"
    print(f"remount after SIGKILL + restart of {daemon}; 7 binds per container; {os.cpu_count()} CPUs")
    print(
        f"{'N':>5} {'nsenter loop':>14} {'lxcfs-guard remount --all':>27} {'speed-up':>9} "
        f"{'ms/container old':>17} {'ms/container new':>17}"
    )
    rows = []
    for n in args.n or [10, 100, 500]:
        r = bench(n, args.lxcfs)
        rows.append(r)
        print(
            f"{n:>5} {r['old_ms']:>11.0f} ms {r['new_ms']:>24.1f} ms {r['old_ms'] / r['new_ms']:>8.1f}x "
            f"{r['old_ms'] / n:>17.2f} {r['new_ms'] / n:>17.3f}",
            flush=True,
        )
        print(f"      ({r['summary']})", flush=True)
    for a, b in zip(rows, rows[1:], strict=False):  # what one more container costs, start-up taken out
        print(
            f"marginal cost from N={a['n']} to N={b['n']}: old {(b['old_ms'] - a['old_ms']) / (b['n'] - a['n']):.2f} "
            f"ms/container, new {(b['new_ms'] - a['new_ms']) / (b['n'] - a['n']):.3f} ms/container"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
