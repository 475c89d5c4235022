"""What one read of a render's cgroup file costs: opened, read and closed each time (how every render read
them before, and how LXCFS does) against held open and reread with pread at 0 (lxcfs_guard/cgroup/held.py).

One fresh cgroup (a 64 MiB memory limit), the files a meminfo and a stat render read, each read `--reads`
times both ways, alternated in rounds; prints microseconds per read, the median round of each. Then what a
held file costs the kernel: `--fds` fds of memory.stat opened and read once each, the machine's Slab
(/proc/meminfo) before and after, per fd.

    .venv/bin/python bench/cgroup_read.py [--reads 20000] [--rounds 5] [--fds 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from lxcfs_guard.cgroup.base import read_text
from lxcfs_guard.cgroup.held import HeldFiles
from lxcfs_guard.testing.cgroups import make_cgroup


def files_of(cg) -> list[str]:
    if cg.v2:
        d = cg.paths["unified"]
        return [f"{d}/memory.stat", f"{d}/memory.current", f"{d}/cpu.stat"]
    return [
        f"{cg.paths['memory']}/memory.stat",
        f"{cg.paths['memory']}/memory.usage_in_bytes",
        f"{cg.paths['cpuacct']}/cpuacct.usage_all",
    ]


def per_read_us(read, path: str, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        read(path)
    return (time.perf_counter() - t) / n * 1e6


def slab_kb() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Slab:"))


def kernel_bytes_per_fd(path: str, n: int) -> float:
    """Slab growth per open-and-read fd of `path` (what a held file keeps: the open file, kernfs's state and
    the seq_file buffer its first read allocates). The machine's other activity is noise: use a large n."""
    before = slab_kb()
    fds = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for _ in range(n)]
    try:
        for fd in fds:
            os.pread(fd, 65536, 0)
        return (slab_kb() - before) * 1024 / n
    finally:
        for fd in fds:
            os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fds", type=int, default=2000)
    args = ap.parse_args()
    held = HeldFiles()
    with make_cgroup(memory=64 << 20) as cg:
        print(f"{'file':<28} {'open+read+close us':>19} {'held, pread us':>15}")
        for path in files_of(cg):
            if read_text(path) is None:
                print(f"{path.rsplit('/', 1)[-1]:<28} (not on this kernel)")
                continue
            opened, kept = [], []
            for _ in range(args.rounds):
                opened.append(per_read_us(read_text, path, args.reads))
                kept.append(per_read_us(held.read, path, args.reads))
            print(f"{path.rsplit('/', 1)[-1]:<28} {statistics.median(opened):>19.1f} {statistics.median(kept):>15.1f}")
        held.close()
        stat = files_of(cg)[0]
        print(
            f"kernel memory per held file ({args.fds} fds of memory.stat): {kernel_bytes_per_fd(stat, args.fds):.0f} B"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
