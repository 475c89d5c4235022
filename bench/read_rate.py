"""Open+read+close rate of lxcfs-guard against Debian's LXCFS 5.0.3, mounted side by side in the same run.

Readers are a small C program (built with gcc here) running inside a 64 MiB / cpuset-free cgroup, so the
reader is never the bottleneck and both daemons see the same caller. Rounds alternate between the two
filesystems; the ratio is ours / LXCFS over the summed rounds. At the end the daemon does `--rss-reads`
more reads and its resident memory is printed before and after, to show it is bounded.

    .venv/bin/python bench/read_rate.py [--files proc/meminfo,...] [--readers 1,4] [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from lxcfs_guard.testing.cgroups import make_cgroup
from lxcfs_guard.testing.daemon import lxcfs_reference, serve
from lxcfs_guard.testing.read_loop import build_reader, rss_kb, run_readers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default="proc/meminfo,proc/cpuinfo,proc/stat")
    ap.add_argument("--readers", default="1,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rss-reads", type=int, default=100_000)
    ap.add_argument("--serve-args", default="", help="extra arguments for lxcfs-guard serve")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lxcfs-guard-bench-") as work:
        exe = build_reader(work)
        with serve(args=args.serve_args.split()) as d, lxcfs_reference() as ref, make_cgroup(memory=64 * 2**20) as cg:
            print(f"lxcfs-guard serve pid {d.pid} on {d.mountpoint}; LXCFS 5.0.3 on {ref}; readers in a 64 MiB cgroup")
            print(f"{'file':<16} {'readers':>7} {'lxcfs-guard/s':>14} {'lxcfs/s':>10} {'ratio':>6}   per-round ratios")
            for name in args.files.split(","):
                for n in (int(x) for x in args.readers.split(",")):
                    ours: list[float] = []
                    theirs: list[float] = []
                    for r in range(args.rounds):
                        # alternate which goes first, so drift in the machine's load hits both alike
                        order = [(ours, d.mountpoint), (theirs, ref)]
                        if r % 2:
                            order.reverse()
                        for sink, root in order:
                            sink.append(run_readers(exe, cg, os.path.join(root, name), n, args.seconds))
                    ratio = sum(ours) / sum(theirs)
                    per = " ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))
                    print(
                        f"{name:<16} {n:>7} {statistics.mean(ours):>14.0f} {statistics.mean(theirs):>10.0f} "
                        f"{ratio:>5.2f}x   {per}",
                        flush=True,
                    )
            before = rss_kb(d.pid)
            if args.rss_reads:
                t0 = time.monotonic()
                run_readers(exe, cg, d.path("proc/meminfo"), 1, 0, args.rss_reads)
                mid = rss_kb(d.pid)
                run_readers(exe, cg, d.path("proc/meminfo"), 1, 0, args.rss_reads)
                after = rss_kb(d.pid)
                print(
                    f"lxcfs-guard serve RSS: {before / 1024:.1f} MiB before, {mid / 1024:.1f} MiB after "
                    f"{args.rss_reads} more reads, {after / 1024:.1f} MiB after {2 * args.rss_reads} "
                    f"({time.monotonic() - t0:.0f} s)"
                )
            else:
                print(f"lxcfs-guard serve RSS: {before / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
