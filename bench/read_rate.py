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
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.support.cgroups import make_cgroup  # noqa: E402
from tests.support.daemon import lxcfs_reference, serve  # noqa: E402

READER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
/* reader PATH SECONDS [MAXREADS]: open+read-to-EOF+close in a loop; prints "reads seconds" */
int main(int argc, char **argv) {
    static char buf[1 << 16];
    double secs = atof(argv[2]);
    long max = argc > 3 ? atol(argv[3]) : 0, n = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double el = 0;
    for (;;) {
        for (int k = 0; k < 32; k++) {
            int fd = open(argv[1], O_RDONLY);
            if (fd < 0) { perror("open"); return 1; }
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0) {}
            if (r < 0) { perror("read"); return 1; }
            close(fd);
            n++;
            if (max && n >= max) break;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        el = (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
        if ((max && n >= max) || (!max && el >= secs)) break;
    }
    printf("%ld %.6f\n", n, el);
    return 0;
}
"""


def build_reader(workdir: str) -> str:
    src = os.path.join(workdir, "reader.c")
    exe = os.path.join(workdir, "reader")
    with open(src, "w") as f:
        f.write(READER_C)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def run_readers(exe: str, cg, path: str, n: int, seconds: float, max_reads: int = 0) -> float:
    """Start `n` readers inside the cgroup at once; total reads per second."""
    join = "; ".join(f"echo $$ > {p}/cgroup.procs" for p in cg.paths.values())
    procs = [
        subprocess.Popen(["sh", "-c", f'{join}; exec "$0" "$1" "$2" "$3"', exe, path, str(seconds), str(max_reads)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds * 10 + 600)
        if p.returncode != 0:
            raise RuntimeError(f"reader failed on {path}")
        reads, el = out.split()
        total += int(reads) / float(el)
    return total


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


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
        with serve(args=args.serve_args.split()) as d, lxcfs_reference() as ref, \
                make_cgroup(memory=64 * 2**20) as cg:
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
                    per = " ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs))
                    print(f"{name:<16} {n:>7} {statistics.mean(ours):>14.0f} {statistics.mean(theirs):>10.0f} "
                          f"{ratio:>5.2f}x   {per}", flush=True)
            before = rss_kb(d.pid)
            if args.rss_reads:
                t0 = time.monotonic()
                run_readers(exe, cg, d.path("proc/meminfo"), 1, 0, args.rss_reads)
                mid = rss_kb(d.pid)
                run_readers(exe, cg, d.path("proc/meminfo"), 1, 0, args.rss_reads)
                after = rss_kb(d.pid)
                print(f"lxcfs-guard serve RSS: {before / 1024:.1f} MiB before, {mid / 1024:.1f} MiB after "
                      f"{args.rss_reads} more reads, {after / 1024:.1f} MiB after {2 * args.rss_reads} "
                      f"({time.monotonic() - t0:.0f} s)")
            else:
                print(f"lxcfs-guard serve RSS: {before / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
