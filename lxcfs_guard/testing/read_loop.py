"""A C open+read+close loop, so that reading is never the bottleneck when the daemon is measured:
bench/read_rate.py's rate figures and the resident-memory test both drive the daemon with it."""

from __future__ import annotations

import os
import subprocess

from lxcfs_guard.testing.cgroups import TestCgroup

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
    """Compile the reader into `workdir` with gcc; its path."""
    src = os.path.join(workdir, "reader.c")
    exe = os.path.join(workdir, "reader")
    with open(src, "w") as f:
        f.write(READER_C)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def run_readers(exe: str, cg: TestCgroup, path: str, n: int, seconds: float, max_reads: int = 0) -> float:
    """Start `n` readers inside the cgroup at once; total reads per second."""
    join = "; ".join(f"echo $$ > {p}/cgroup.procs" for p in cg.paths.values())
    procs = [
        subprocess.Popen(
            ["sh", "-c", f'{join}; exec "$0" "$1" "$2" "$3"', exe, path, str(seconds), str(max_reads)],
            stdout=subprocess.PIPE,
            text=True,
        )
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
    """The resident memory of `pid` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
