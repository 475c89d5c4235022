"""A busy node: N cgroups, one C reader in each reading a few files once a period, against lxcfs-guard serve and
Debian's LXCFS 5.0.3 in the same run, rounds alternated.

A hot loop on one cgroup mostly measures the render cache. A node is different: hundreds of containers whose
agents read /proc/meminfo, stat, cpuinfo ... now and then, so every read is a cold one for its cgroup. Here each
of N cgroups (v1: memory, cpu, cpuacct and blkio, each with its own memory limit; v2: one cgroup) holds one reader
that joins its cgroup BEFORE it reads anything, waits for a common start, then at a random phase in
[0, period) opens, reads to EOF and closes each file once a period, timing each with CLOCK_MONOTONIC.

Per daemon and round it prints reads, errors (failed open/read, content empty (diskstats may be) or not ending in a
newline), p50 / p99 / max latency, the daemon's CPU per 1000 reads and its memory, and the p99 of every pass but
each reader's first ("p99 warm"): each round starts its daemon afresh, so a reader's first pass is a daemon's first
sight of that cgroup, as after a restart, and the later ones are a node whose daemon has been up a while. Each
round also says how much of its slowest 1% fell in the first pass, and that pass's p50 file by file.

The daemon runs in a cpuacct cgroup of its own, so CPU is every process and thread it has or had (cpuacct.usage
counts exited children too), sampled right before the start and after the last reader finished; memory is PSS
summed over the processes in that cgroup (/proc/PID/smaps_rollup) at the end of the round.

    .venv/bin/python bench/fleet.py [--n 200] [--period 1] [--seconds 8] [--rounds 2]
        [--files proc/meminfo,...] [--serve-args '...'] [--lxcfs-args '-l'] [--daemons ours,lxcfs]

Everything it makes (cgroups, mounts, processes, temp dirs) is removed on exit, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import os
import random
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LXCFS_GUARD = os.path.join(REPO, ".venv", "bin", "lxcfs-guard")
LXCFS = "/usr/bin/lxcfs"
CGROUP_ROOT = "/sys/fs/cgroup"
# A runtime puts a container in every hierarchy; these are the ones the views read (cpu: loadavg counts the
# tasks of the cpu cgroup, as LXCFS does; left in the root, every reader's loadavg would count the whole host).
V1_READER_CONTROLLERS = ("memory", "cpu", "cpuacct", "blkio")
DEFAULT_FILES = "proc/meminfo,proc/stat,proc/cpuinfo,proc/loadavg,proc/uptime,proc/diskstats"
RECORD = struct.Struct("<iiqi4x")  # file index, error code, latency in ns, pass

READER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
/* reader OUT PERIOD SECONDS OFFSET DUMP NCG CGPROCS... FILES...
   Joins each cgroup (writes 0 to its cgroup.procs), writes one byte to stdout (ready), blocks on stdin
   until EOF (the common start), then at OFFSET + k*PERIOD reads every file once (open, read to EOF,
   close), recording (file, error, ns, pass k) per read; writes the records to OUT at the end. DUMP ("-" for
   none) gets the content of the first read of the first file. Errors: 1 open, 2 read, 3 empty (but
   diskstats) or not ending in a newline. */
struct rec { int file; int err; long long ns; int pass; int pad; };
static char buf[1 << 20];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    const char *out = argv[1];
    double period = atof(argv[2]), secs = atof(argv[3]), offset = atof(argv[4]);
    const char *dump = argv[5];
    int ncg = atoi(argv[6]);
    char **files = argv + 7 + ncg;
    int nfiles = argc - 7 - ncg;
    for (int i = 0; i < ncg; i++) {
        int fd = open(argv[7 + i], O_WRONLY);
        if (fd < 0 || write(fd, "0", 1) != 1) { perror(argv[7 + i]); return 2; }
        close(fd);
    }
    if (write(1, "r", 1) != 1) return 2;
    char c;
    while (read(0, &c, 1) > 0) {}
    /* a cgroup that never did I/O has an empty diskstats (LXCFS and we leave untouched devices out) */
    int may_be_empty[256] = {0};
    for (int f = 0; f < nfiles && f < 256; f++) may_be_empty[f] = strstr(files[f], "diskstats") != NULL;
    long cap = (long)(secs / period + 2) * nfiles;
    struct rec *recs = calloc(cap, sizeof *recs);
    long n = 0;
    double t0 = now();
    for (long k = 0;; k++) {
        double due = t0 + offset + k * period;
        if (due >= t0 + secs) break;
        struct timespec ts = { (time_t)due, (long)((due - (time_t)due) * 1e9) };
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
        for (int f = 0; f < nfiles && n < cap; f++) {
            struct timespec a, b;
            int err = 0;
            long tot = 0;
            clock_gettime(CLOCK_MONOTONIC, &a);
            int fd = open(files[f], O_RDONLY);
            if (fd < 0) err = 1000 + errno;  /* open failed: 1000 + errno */
            else {
                ssize_t r;
                while ((r = read(fd, buf + (tot < (long)sizeof buf ? tot : 0),
                                 tot < (long)sizeof buf ? sizeof buf - tot : sizeof buf)) > 0) tot += r;
                if (r < 0) err = 2000 + errno;  /* read failed: 2000 + errno */
                close(fd);
            }
            clock_gettime(CLOCK_MONOTONIC, &b);
            if (!err && (tot > (long)sizeof buf || (tot == 0 && !may_be_empty[f]) || (tot > 0 && buf[tot - 1] != '\n')))
                err = 3;  /* short, empty or cut content */
            recs[n].file = f; recs[n].err = err; recs[n].pass = (int)k;
            recs[n].ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
            n++;
            if (dump[0] != '-' && f == 0 && k == 0 && !err) {
                FILE *d = fopen(dump, "w");
                if (d) { fwrite(buf, 1, tot, d); fclose(d); }
            }
        }
    }
    FILE *o = fopen(out, "w");
    if (!o) { perror(out); return 2; }
    fwrite(recs, sizeof *recs, n, o);
    fclose(o);
    return 0;
}
"""


# -- cgroups ------------------------------------------------------------------------------------------
def is_v2() -> bool:
    return os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers")


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _rmdir_retry(path: str, deadline: float = 5.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)  # a reader we killed may take a moment to leave


@dataclass
class Fleet:
    """One parent cgroup per hierarchy with N children `r00000`...; each child has its own memory limit."""

    n: int
    base_limit: int
    name: str = field(default_factory=lambda: f"lxcfs-guard-fleet-{uuid.uuid4().hex[:10]}")
    parents: list[str] = field(default_factory=list)  # created, in order
    children: list[str] = field(default_factory=list)  # created
    extra: list[str] = field(default_factory=list)  # daemon cgroups, created
    create_s: float = 0.0
    remove_s: float = 0.0

    def hierarchies(self) -> list[str]:
        if is_v2():
            return [CGROUP_ROOT]
        return [f"{CGROUP_ROOT}/{c}" for c in V1_READER_CONTROLLERS]

    def memory_hierarchy(self) -> str:
        return CGROUP_ROOT if is_v2() else f"{CGROUP_ROOT}/memory"

    def limit(self, i: int) -> int:
        return self.base_limit + i * 2**20  # each its own: a leak of one cgroup's view into another shows

    def child(self, hierarchy: str, i: int) -> str:
        return f"{hierarchy}/{self.name}/r{i:05d}"

    def procs_files(self, i: int) -> list[str]:
        return [f"{self.child(h, i)}/cgroup.procs" for h in self.hierarchies()]

    def create(self) -> None:
        t0 = time.monotonic()
        for h in self.hierarchies():
            os.mkdir(f"{h}/{self.name}")
            self.parents.append(f"{h}/{self.name}")
            if is_v2():
                _write(f"{h}/{self.name}/cgroup.subtree_control", "+memory +cpu +io")
        mem = self.memory_hierarchy()
        limit_file = "memory.max" if is_v2() else "memory.limit_in_bytes"

        def make(i: int) -> list[str]:
            made = []
            try:
                for h in self.hierarchies():
                    os.mkdir(self.child(h, i))
                    made.append(self.child(h, i))
                _write(f"{self.child(mem, i)}/{limit_file}", str(self.limit(i)))
            finally:
                self.children.extend(made)  # list.extend is atomic under the GIL
            return made

        with ThreadPoolExecutor(8) as pool:
            for _ in pool.map(make, range(self.n)):
                pass
        self.create_s = time.monotonic() - t0

    def daemon_cgroup(self, tag: str) -> str:
        """A cgroup of the cpuacct hierarchy (v2: the one) for one daemon's processes."""
        h = CGROUP_ROOT if is_v2() else f"{CGROUP_ROOT}/cpuacct"
        path = f"{h}/{self.name}/daemon-{tag}"
        os.mkdir(path)
        self.extra.append(path)
        return path

    def remove(self) -> None:
        t0 = time.monotonic()
        for path in self.extra + self.children:
            kill_cgroup_procs(path)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(_rmdir_retry, self.extra + self.children))
        for p in reversed(self.parents):
            _rmdir_retry(p)
        self.remove_s = time.monotonic() - t0


def cgroup_pids(path: str) -> list[int]:
    try:
        with open(f"{path}/cgroup.procs") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def process_cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime (clock ticks) of each process, its threads included."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            out[pid] = int(fields[11]) + int(fields[12])
    return out


def thread_sched(pids: list[int]) -> dict[int, tuple[int, int]]:
    """Per thread of `pids`: (ns spent runnable but waiting for a CPU, times it was given one), from
    /proc/PID/task/TID/schedstat. How long a daemon waits to run after a request woke it is part of every
    reader's latency that its CPU time does not show."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError, ValueError):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    _, wait, slices = f.read().split()
                out[int(tid)] = (int(wait), int(slices))
    return out


def kill_cgroup_procs(path: str) -> None:
    """SIGKILL, by pid, what is left in one of OUR cgroups (only our readers and daemons ever join them)."""
    for pid in cgroup_pids(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cpu_counters(cg: str) -> tuple[int, int, int]:
    """(all CPU in ns, user, system) of the cgroup so far; user and system are in one unit of their own (v1:
    USER_HZ ticks from cpuacct.stat, v2: microseconds), only their ratio is used."""
    if is_v2():
        got = dict.fromkeys(("usage_usec", "user_usec", "system_usec"), 0)
        with open(f"{cg}/cpu.stat") as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k in got:
                    got[k] = int(v)
        return got["usage_usec"] * 1000, got["user_usec"], got["system_usec"]
    with open(f"{cg}/cpuacct.usage") as f:
        total = int(f.read())
    split = {}
    with open(f"{cg}/cpuacct.stat") as f:
        for line in f:
            k, _, v = line.partition(" ")
            split[k] = int(v)
    return total, split.get("user", 0), split.get("system", 0)


def pss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


# -- daemons ------------------------------------------------------------------------------------------
def _is_mount(path: str) -> bool:
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path.rstrip("/"))).st_dev
    except OSError:
        return True  # ENOTCONN: a dead FUSE mount is still a mount


def _answers(path: str) -> bool:
    try:
        r = subprocess.run(["cat", path], capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and bool(r.stdout)


@dataclass
class Daemon:
    kind: str  # "ours" | "lxcfs" | "base"
    proc: subprocess.Popen
    mountpoint: str
    cgroup: str
    workdir: str


def start_daemon(
    kind: str, fleet: Fleet, tag: str, extra: list[str], timeout: float = 30.0, base_tree: str = ""
) -> Daemon:
    """Start the daemon inside its own cgroup (it joins before exec, so every thread and child is counted)."""
    work = tempfile.mkdtemp(prefix=f"lxcfs-fleet-{kind}-")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    cg = fleet.daemon_cgroup(tag)
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    if kind in ("ours", "base"):
        prog = [LXCFS_GUARD]
        if kind == "base":  # another tree of lxcfs_guard (e.g. `git archive OLD lxcfs_guard | tar -x -C DIR`)
            # -P: not the working directory's lxcfs_guard (this checkout's) ahead of PYTHONPATH's
            prog = [sys.executable, "-P", "-m", "lxcfs_guard.cli"]
            env["PYTHONPATH"] = os.path.abspath(base_tree)
        cmd = [*prog, "serve", "--mountpoint", mnt, "--state-dir", os.path.join(work, "state"), *extra]
    else:
        cmd = [LXCFS, "--pidfile", os.path.join(work, "lxcfs.pid"), *extra, mnt]
    with open(os.path.join(work, "log"), "wb") as log:
        proc = subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$0" && exec "$@"', f"{cg}/cgroup.procs", *cmd],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    d = Daemon(kind, proc, mnt, cg, work)
    deadline = time.monotonic() + timeout
    while not (_is_mount(mnt) and _answers(os.path.join(mnt, "proc", "meminfo"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(os.path.join(work, "log"), errors="replace") as f:
                msg = f.read()[-2000:]
            stop_daemon(d)
            raise RuntimeError(f"{kind} did not come up ({proc.returncode}):\n{msg}")
        time.sleep(0.05)
    return d


def stop_daemon(d: Daemon) -> None:
    if d.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(d.proc.pid, signal.SIGTERM)
        try:
            d.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)
    kill_cgroup_procs(d.cgroup)
    for _ in range(10):
        if not _is_mount(d.mountpoint):
            break
        subprocess.run(["umount", "-l", d.mountpoint], capture_output=True, check=False)
    if not _is_mount(d.mountpoint):
        shutil.rmtree(d.workdir, ignore_errors=True)


# -- readers ------------------------------------------------------------------------------------------
def build_reader(workdir: str) -> str:
    src = os.path.join(workdir, "fleet_reader.c")
    exe = os.path.join(workdir, "fleet_reader")
    with open(src, "w") as f:
        f.write(READER_C)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


@dataclass
class RoundResult:
    kind: str
    round: int
    reads: int
    errors: int
    lat_ns: list[int]
    cpu_ns: int
    user_pct: float  # of cpu_ns, the share spent in user space (the rest is the kernel's, on our behalf)
    shares: list[int]  # CPU ticks of each of the daemon's processes over the round, in pid order
    pss_kb: int
    wall_s: float
    steal_pct: float  # of the machine's CPU time over the round, taken by the hypervisor for others
    runq_ns: int  # the daemon's threads, runnable but waiting for a CPU, summed over the round
    slices: int  # and how many times they were given one
    per_file: dict[str, tuple[int, int]]  # name -> (reads, errors)
    file_p99_ms: dict[str, tuple[float, float]]  # name -> (p50, p99) of its reads
    pass_p99_ms: list[float]  # p99 of the reads of each pass (a pass: every reader reads every file once)
    warm_p99_ms: float  # p99 of every pass but each reader's first (see print_round)
    first_in_top: float  # the share of the slowest 1% of reads that were in a reader's first pass
    first_p50_ms: dict[str, float]  # name -> p50 of its reads in the first pass
    kinds: dict[str, int]  # 'open ENFILE' -> count
    verified: str

    def pct(self, q: float) -> float:
        return quantile_ms(self.lat_ns, q)

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_ns / 1e6 / max(self.reads, 1) * 1000


def run_round(
    exe: str,
    fleet: Fleet,
    d: Daemon,
    files: list[str],
    args: argparse.Namespace,
    rnd: int,
    work: str,
    rng: random.Random,
) -> RoundResult:
    rdir = tempfile.mkdtemp(prefix=f"r{rnd}-{d.kind}-", dir=work)
    paths = [os.path.join(d.mountpoint, f) for f in files]
    dump = os.path.join(rdir, "first-meminfo")
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    procs: list[subprocess.Popen] = []
    try:
        for i in range(fleet.n):
            cgs = fleet.procs_files(i)
            argv = [
                exe,
                os.path.join(rdir, f"{i}.bin"),
                str(args.period),
                str(args.seconds),
                f"{rng.random() * args.period:.6f}",
                dump if i == 0 else "-",
                str(len(cgs)),
                *cgs,
                *paths,
            ]
            procs.append(subprocess.Popen(argv, stdin=go_r, stdout=ready_w, close_fds=True))
        os.close(ready_w)
        ready_w = -1
        got = 0
        deadline = time.monotonic() + 60 + fleet.n * 0.05
        while got < fleet.n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ready_r], [], [], left)[0]:
                raise RuntimeError(f"only {got} of {fleet.n} readers joined their cgroups")
            b = os.read(ready_r, 65536)
            if not b:
                n_failed = sum(p.poll() not in (None, 0) for p in procs)
                raise RuntimeError(f"readers exited before the start ({n_failed} failed)")
            got += len(b)
        cpu0 = cpu_counters(d.cgroup)
        per_proc0 = process_cpu_ticks(cgroup_pids(d.cgroup))
        sched0 = thread_sched(cgroup_pids(d.cgroup))
        steal0 = machine_ticks()
        t0 = time.monotonic()
        os.close(go_w)  # EOF on every reader's stdin: go
        go_w = -1
        for p in procs:
            p.wait(timeout=args.seconds * 4 + 120)
        wall = time.monotonic() - t0
        steal1 = machine_ticks()
        cpu1 = cpu_counters(d.cgroup)
        per_proc1 = process_cpu_ticks(cgroup_pids(d.cgroup))
        sched1 = thread_sched(cgroup_pids(d.cgroup))
        # over the threads that lived through the round
        runq_ns = sum(w - sched0[t][0] for t, (w, _) in sched1.items() if t in sched0)
        slices = sum(n - sched0[t][1] for t, (_, n) in sched1.items() if t in sched0)
        # the share of each process that lived through the round (ours: the holder first, then the workers)
        shares = [per_proc1[p] - per_proc0[p] for p in per_proc1 if p in per_proc0]
        cpu, user, system = (after - before for after, before in zip(cpu1, cpu0, strict=True))
        user_pct = 100.0 * user / (user + system) if user + system else float("nan")
        pss = pss_kb(cgroup_pids(d.cgroup))
        failed = [p for p in procs if p.returncode > 0]
        if failed:
            raise RuntimeError(f"{len(failed)} readers failed (exit {failed[0].returncode})")
        killed = {i for i, p in enumerate(procs) if p.returncode < 0}
        if killed:  # a signal from outside (the machine is shared); the round goes on without their records
            print(
                f"  warning: {len(killed)} readers were killed by a signal; their reads are left out", file=sys.stderr
            )
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()
        for fd in (go_r, go_w, ready_r, ready_w):
            if fd >= 0:
                os.close(fd)
    lat: list[int] = []
    by_pass: dict[int, list[int]] = {}
    errors = 0
    per_file = {f: [0, 0] for f in files}
    file_lat: dict[str, list[int]] = {f: [] for f in files}
    first_lat: dict[str, list[int]] = {f: [] for f in files}  # the reads of each file in the first pass
    kinds: dict[str, int] = {}
    for i in range(fleet.n):
        if i in killed:
            continue
        with open(os.path.join(rdir, f"{i}.bin"), "rb") as f:
            data = f.read()
        for fi, err, ns, k in RECORD.iter_unpack(data):
            lat.append(ns)
            by_pass.setdefault(k, []).append(ns)
            per_file[files[fi]][0] += 1
            file_lat[files[fi]].append(ns)
            if k == 0:
                first_lat[files[fi]].append(ns)
            if err:
                errors += 1
                per_file[files[fi]][1] += 1
                kinds[error_kind(err)] = kinds.get(error_kind(err), 0) + 1
    lat.sort()
    warm = sorted(ns for k, v in by_pass.items() if k > 0 for ns in v)
    top = lat[int(0.99 * len(lat)) :]  # the slowest 1%
    first_sorted = sorted(by_pass.get(0, []))
    first_in_top = min(1.0, (len(first_sorted) - bisect.bisect_left(first_sorted, top[0])) / len(top)) if top else 0.0
    verified = verify_dump(dump, fleet.limit(0)) if files[0] == "proc/meminfo" else "first file is not meminfo"
    shutil.rmtree(rdir, ignore_errors=True)
    return RoundResult(
        d.kind,
        rnd,
        len(lat),
        errors,
        lat,
        cpu,
        user_pct,
        shares,
        pss,
        wall,
        100.0 * (steal1[0] - steal0[0]) / max(steal1[1] - steal0[1], 1),
        runq_ns,
        slices,
        {k: (v[0], v[1]) for k, v in per_file.items()},
        {k: (quantile_ms(sorted(v), 0.5), quantile_ms(sorted(v), 0.99)) for k, v in file_lat.items()},
        [quantile_ms(sorted(by_pass[k]), 0.99) for k in sorted(by_pass)],
        quantile_ms(warm, 0.99),
        first_in_top,
        {k.rsplit("/", 1)[-1]: quantile_ms(sorted(v), 0.5) for k, v in first_lat.items()},
        kinds,
        verified,
    )


def quantile_ms(sorted_ns: list[int], q: float) -> float:
    """The q-quantile of sorted latencies in ns, in ms (NaN for none)."""
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def error_kind(err: int) -> str:
    """The reader's error code as words: which call failed and its errno."""
    if err == 3:
        return "content"
    call = "open" if err < 2000 else "read"
    return f"{call} {errno.errorcode.get(err % 1000, err % 1000)}"


def verify_dump(path: str, limit: int) -> str:
    """Reader 0's first meminfo must show its own cgroup's limit: else the benchmark measured host views."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kb = int(line.split()[1])
                    if kb != limit // 1024:
                        raise RuntimeError(f"reader 0 read MemTotal {kb} kB, its cgroup's limit is {limit // 1024} kB")
                    return f"reader 0 read MemTotal {kb} kB = its cgroup's limit"
    except FileNotFoundError:
        raise RuntimeError("reader 0 got no meminfo (its first read failed)") from None
    raise RuntimeError("no MemTotal in reader 0's meminfo")


# -- report -------------------------------------------------------------------------------------------
NAMES = {"ours": "lxcfs-guard", "base": "base tree", "lxcfs": "LXCFS 5.0.3"}


def print_round(r: RoundResult) -> None:
    print(
        f"  round {r.round} {NAMES[r.kind]:<12} reads {r.reads:>6} errors {r.errors:>3}  "
        f"p50 {r.pct(0.5):6.2f}  p99 {r.pct(0.99):6.2f}  max {r.lat_ns[-1] / 1e6 if r.lat_ns else 0:7.2f} ms  "
        f"CPU {r.cpu_per_1000:6.1f} ms/1000 reads ({r.user_pct:3.0f}% user)  "
        f"PSS {r.pss_kb / 1024:5.1f} MB  ({r.wall_s:.1f} s, steal {r.steal_pct:.1f}%)",
        flush=True,
    )
    if len(r.shares) > 1:
        total = sum(r.shares) or 1
        print("    CPU by process (pid order): " + ", ".join(f"{100 * t / total:.0f}%" for t in r.shares))
    print(
        f"    waiting for a CPU once runnable: {r.runq_ns / 1e6:.0f} ms over the round, "
        f"{r.runq_ns / 1e3 / max(r.slices, 1):.0f} us a time it ran ({r.slices} times)"
    )
    print(
        "    p50/p99 by file (ms): "
        + ", ".join(f"{k.rsplit('/', 1)[-1]} {p50:.2f}/{p99:.2f}" for k, (p50, p99) in r.file_p99_ms.items())
        + f"; all p90 {r.pct(0.9):.2f} p95 {r.pct(0.95):.2f} p99.9 {r.pct(0.999):.2f}"
    )
    if r.pass_p99_ms:
        # A reader's first pass meets a daemon that has just started (a new one each round) and cgroups it has
        # never read for; the passes after it are the steady state of a node whose daemon has been up a while.
        print(
            "    p99 by pass (ms): "
            + " ".join(f"{ms:.3g}" if ms < 100 else f"{ms:.0f}" for ms in r.pass_p99_ms)
            + f"; after the first pass {r.warm_p99_ms:.2f}"
        )
        print(
            f"    first pass: {100 * r.first_in_top:.0f}% of the slowest 1% of reads; p50 by file (ms) "
            + ", ".join(f"{k} {ms:.2f}" for k, ms in r.first_p50_ms.items())
        )
    bad = {k: v for k, v in r.per_file.items() if v[1]}
    if bad:
        print("    errors per file: " + ", ".join(f"{k} {e}/{n}" for k, (n, e) in bad.items()))
        print("    error kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(r.kinds.items(), key=lambda kv: -kv[1])))


def print_summary(results: list[RoundResult], n: int) -> None:
    print(f"\nsummary, N={n} ({'; '.join(dict.fromkeys(r.verified for r in results))})")
    print(
        f"{'daemon':<12} {'round':>5} {'reads':>7} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>8} "
        f"{'CPU ms/1000':>11} {'user %':>6} {'PSS MB':>7} {'steal %':>7} {'p99 warm':>8}"
    )
    for kind in NAMES:
        for r in (x for x in results if x.kind == kind):
            print(
                f"{NAMES[kind]:<12} {r.round:>5} {r.reads:>7} {r.errors:>6} {r.pct(0.5):>7.2f} {r.pct(0.99):>7.2f} "
                f"{r.lat_ns[-1] / 1e6 if r.lat_ns else 0:>8.2f} {r.cpu_per_1000:>11.1f} {r.user_pct:>6.0f} "
                f"{r.pss_kb / 1024:>7.1f} {r.steal_pct:>7.1f} {r.warm_p99_ms:>8.2f}"
            )
    print("(p99 warm: every pass but each reader's first, which meets a daemon started for the round)")


def machine_ticks() -> tuple[int, int]:
    """(steal, all) CPU ticks of the machine so far: a round the hypervisor took CPU from says so."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="cgroups, one reader in each")
    ap.add_argument("--period", type=float, default=1.0, help="seconds between one reader's passes")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of a round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--files", default=DEFAULT_FILES, help="comma-separated, relative to the mountpoint")
    ap.add_argument(
        "--daemons", default="ours,lxcfs", help="which to run (ours, lxcfs, base), in the first round's order"
    )
    ap.add_argument(
        "--base-tree",
        default="",
        help="for 'base': a directory holding another lxcfs_guard package, to compare two versions",
    )
    ap.add_argument("--serve-args", default="", help="extra arguments for lxcfs-guard serve")
    ap.add_argument("--base-args", default=None, help="serve arguments for 'base' (default: --serve-args)")
    ap.add_argument("--lxcfs-args", default="", help="extra arguments for lxcfs (e.g. -l: virtualized loadavg)")
    ap.add_argument("--base-limit-mib", type=int, default=256, help="reader i's cgroup gets this + i MiB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--profile",
        metavar="CMD",
        default="",
        help="run CMD with {pid} and {seconds} filled in (e.g. 'py-spy record -p {pid} -d {seconds} "
        "-f raw -o /tmp/x.txt') during each round of ours",
    )
    args = ap.parse_args()
    files = [f.strip() for f in args.files.split(",") if f.strip()]
    if args.base_args is None:
        args.base_args = args.serve_args
    kinds = [k.strip() for k in args.daemons.split(",") if k.strip()]
    rng = random.Random(args.seed)

    def on_term(signum, frame):  # a SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: list[RoundResult] = []
    fleet = Fleet(args.n, args.base_limit_mib * 2**20)
    work = tempfile.mkdtemp(prefix="lxcfs-fleet-")
    daemon: Daemon | None = None
    try:
        exe = build_reader(work)
        print(
            f"load average before: {loadavg()}; {os.cpu_count()} CPUs; N={args.n}, period {args.period} s, "
            f"{args.seconds} s a round, files {','.join(files)}",
            flush=True,
        )
        fleet.create()
        print(
            f"created {args.n} cgroups x {len(fleet.hierarchies())} hierarchies in {fleet.create_s:.2f} s", flush=True
        )

        def extra(kind: str) -> list[str]:
            return shlex.split({"lxcfs": args.lxcfs_args, "ours": args.serve_args}.get(kind, args.base_args))

        # Round 0, not measured: 2 s of each daemon in turn, through its mount. The first time 1,000 fresh
        # readers go through a FUSE mount to new cgroups is slow in the kernel (p99 700-1,300 ms in the
        # first pass, about 300 ms after): without this it landed on whichever daemon was first in round 1,
        # ours or LXCFS (seen both ways, swapping --daemons). Reading the host's own files first, or every
        # cgroup file, was not enough.
        for kind in kinds:
            daemon = start_daemon(kind, fleet, f"{kind}-0", extra(kind), base_tree=args.base_tree)
            try:
                run_round(exe, fleet, daemon, files, argparse.Namespace(**{**vars(args), "seconds": 2.0}), 0, work, rng)
            finally:
                stop_daemon(daemon)
                daemon = None
        for rnd in range(1, args.rounds + 1):
            order = kinds if rnd % 2 else list(reversed(kinds))
            for kind in order:
                daemon = start_daemon(kind, fleet, f"{kind}-{rnd}", extra(kind), base_tree=args.base_tree)
                prof = None
                if args.profile and kind != "lxcfs":
                    prof = subprocess.Popen(
                        shlex.split(args.profile.format(pid=daemon.proc.pid, seconds=int(args.seconds) + 2))
                    )
                try:
                    r = run_round(exe, fleet, daemon, files, args, rnd, work, rng)
                finally:
                    if prof is not None:
                        try:
                            prof.wait(args.seconds + 60)
                        except subprocess.TimeoutExpired:
                            prof.kill()
                            prof.wait()
                    stop_daemon(daemon)
                    daemon = None
                results.append(r)
                print_round(r)
        print_summary(results, args.n)
        print(f"load average after: {loadavg()}")
        return 0
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if daemon is not None:
            stop_daemon(daemon)
        try:
            fleet.remove()
            if fleet.n:
                print(f"removed the cgroups in {fleet.remove_s:.2f} s", file=sys.stderr)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
