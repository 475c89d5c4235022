"""Daemon CPU per read in a hot loop: lxcfs-guard serve (pyfuse3 + trio), the same views behind the raw-protocol
prototype loop (bench/rawfuse_proto.py), and Debian's LXCFS 5.0.3, alternated in one run.

One C reader in a 64 MiB cgroup opens, reads and closes FILE --reads times against each daemon; printed are the
read rate and the daemon's CPU (utime+stime of all its threads) per 1000 reads. `--cache-ttl 0` (the default
here) makes every open render, so the figure is the whole per-request cost.

    .venv/bin/python bench/loop_cpu.py [--reads 20000] [--file proc/meminfo] [--rounds 2] [--serve-args '...']
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(REPO, ".venv", "bin", "python")
CONTROLLERS = ("memory", "cpu", "cpuacct", "blkio")

READER_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    static char buf[1 << 16];
    long n = atol(argv[2]);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) return 1;
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0) {}
        if (r < 0) return 1;
        close(fd);
    }
    return 0;
}
"""


def daemon_cpu_ms(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total * 1000 // os.sysconf("SC_CLK_TCK")


def is_mount(path: str) -> bool:
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--file", default="proc/meminfo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve-args", default="--cache-ttl 0", help="for both Python daemons")
    args = ap.parse_args()
    extra = shlex.split(args.serve_args)
    work = tempfile.mkdtemp(prefix="lxcfs-loopcpu-")
    name = f"lxcfs-guard-loopcpu-{uuid.uuid4().hex[:8]}"
    made: list[str] = []
    try:
        src, exe = os.path.join(work, "r.c"), os.path.join(work, "r")
        with open(src, "w") as f:
            f.write(READER_C)
        subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
        for c in CONTROLLERS:
            os.mkdir(f"/sys/fs/cgroup/{c}/{name}")
            made.append(f"/sys/fs/cgroup/{c}/{name}")
        with open(f"/sys/fs/cgroup/memory/{name}/memory.limit_in_bytes", "w") as f:
            f.write(str(64 << 20))
        daemons = {
            "lxcfs-guard serve": lambda m: [os.path.join(REPO, ".venv", "bin", "lxcfs-guard"), "serve",
                                            "--mountpoint", m, "--state-dir", m + ".state", *extra],
            "raw-loop prototype": lambda m: [PY, os.path.join(REPO, "bench", "rawfuse_proto.py"), "serve",
                                             "--mountpoint", m, *extra],
            "LXCFS 5.0.3": lambda m: ["/usr/bin/lxcfs", "--pidfile", m + ".pid", m],
        }
        print(f"load average {open('/proc/loadavg').read().split()[:3]}; {args.reads} reads of {args.file}")
        for _ in range(args.rounds):
            for label, cmd in daemons.items():
                mnt = tempfile.mkdtemp(dir=work)
                p = subprocess.Popen(cmd(mnt), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
                try:
                    deadline = time.monotonic() + 20
                    while not is_mount(mnt):
                        if p.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"{label} did not mount")
                        time.sleep(0.05)
                    time.sleep(0.3)
                    c0, t0 = daemon_cpu_ms(p.pid), time.monotonic()
                    join = "; ".join(f'echo $$ > "/sys/fs/cgroup/{c}/{name}/cgroup.procs"' for c in CONTROLLERS)
                    subprocess.run(["sh", "-c", f'{join}; exec "$0" "$1" "$2"', exe, os.path.join(mnt, args.file),
                                    str(args.reads)], check=True, timeout=600)
                    dt, c1 = time.monotonic() - t0, daemon_cpu_ms(p.pid)
                    print(f"{label:<20} {args.reads / dt:8.0f} reads/s   daemon CPU {(c1 - c0) / args.reads * 1000:6.1f}"
                          f" ms per 1000 reads", flush=True)
                finally:
                    if p.poll() is None:
                        os.kill(p.pid, signal.SIGTERM)
                        try:
                            p.wait(5)
                        except subprocess.TimeoutExpired:
                            os.kill(p.pid, signal.SIGKILL)
                            p.wait()
                    for _ in range(5):
                        if not is_mount(mnt):
                            break
                        subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        return 0
    finally:
        time.sleep(0.2)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
