"""Light containers with a reader looping inside each, for the watchdog's tests and bench/recovery.py.

A container here is `unshare -m --propagation private` in its own memory cgroup (limit 64 + i MiB, so every
container has values no other one has). Its only process is the reader (this file, run as a script), which
first detaches the copies of FUSE mounts it inherited from the host (a real container has none of them),
prints its pid, waits for "go" on stdin, and then reads a file through its bind every `interval` seconds,
printing one line per change of outcome, stamped with CLOCK_MONOTONIC (one clock for every process on the
machine, namespaces included):

    <ns> ok | <ns> err ENOTCONN | <ns> wrong MemTotal: 24684092 kB      ...   summary <reads> <failed> <wrong>

"wrong" is any content that is not the container's own MemTotal (the host's, another container's); it is
printed every time, not only on change. The harness attaches the binds with `lxcfs-guard attach` (which
registers the container) before it says go.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

SLOW_NS = 50_000_000  # a read slower than this is not "reading correctly" (it was stuck on a hung daemon)
HEARTBEAT_NS = 100_000_000  # an "ok" line at least this often, so the harness can tell a blocked reader


def _reader_main(path: str, expect_kb: int, interval: float) -> None:  # pragma: no cover - in the container
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/self/mountinfo", "rb") as f:  # bytes: a mount name may be any bytes (not UTF-8)
        inherited = [line.split(b" ") for line in f.read().split(b"\n") if line]
    for fields in reversed(inherited):
        fstype = fields[fields.index(b"-", 6) + 1]
        if fstype.startswith(b"fuse") and fstype != b"fusectl":
            libc.umount2(fields[4], 2)  # MNT_DETACH
    print(os.getpid(), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    stop, count = [], []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGUSR1, lambda *_: count.append(1))  # "how many so far?"
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # the harness went away: end quietly
    reads = failed = wrong = 0
    state, last_print = "", 0
    want = " ".join(f"MemTotal: {expect_kb} kB".split())
    while not stop:
        start = time.monotonic_ns()
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, 65536)
            finally:
                os.close(fd)
            line = data.split(b"\n", 1)[0].decode(errors="replace")
            kind, detail = ("ok", "") if " ".join(line.split()) == want else ("wrong", line)
        except OSError as e:
            kind, detail = "err", errno.errorcode.get(e.errno or 0, str(e.errno))
        end = time.monotonic_ns()
        if kind == "ok" and end - start > SLOW_NS:
            kind, detail = "slow", f"{(end - start) // 1000000} ms"
        reads += 1
        failed += kind == "err"
        wrong += kind == "wrong"
        if kind != state or kind in ("wrong", "slow") or end - last_print > HEARTBEAT_NS:
            print(f"{end} {kind} {detail}", flush=True)
            state, last_print = kind, end
        if count:
            count.clear()
            print(f"count {reads} {failed} {wrong}", flush=True)
        time.sleep(interval)
    print(f"summary {reads} {failed} {wrong}", flush=True)


# --- harness side ---------------------------------------------------------------------------------------


@dataclass
class Reader:
    id: str
    proc: subprocess.Popen
    expect_kb: int
    pid: int = 0  # as seen in the container's pid namespace (the host's, or a systemd box's)
    events: list[tuple[int, str, str]] = field(default_factory=list)
    summary: tuple[int, int, int] | None = None
    counts: tuple[int, int, int] | None = None  # (reads, failed, wrong) at the last count/summary line
    _buf: bytes = b""

    def pump(self) -> None:
        """Take whatever the reader printed (never blocks)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            parts = raw.decode(errors="replace").split(" ", 2)
            if parts[0] in ("summary", "count"):
                totals = (int(parts[1]), int(parts[2].split()[0]), int(parts[2].split()[1]))
                if parts[0] == "summary":
                    self.summary = totals
                self.counts = totals
            elif parts[0].isdigit() and len(parts) >= 2:
                self.events.append((int(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))

    def recovery_ns(self, since_ns: int, now_ns: int) -> int | None:
        """Time from `since_ns` until this container read correctly again: 0 if no read after it failed,
        was wrong or was slow; None while it is not reading correctly now (no fresh "ok" heartbeat)."""
        if not self.events or self.events[-1][1] != "ok" or now_ns - self.events[-1][0] > 2 * HEARTBEAT_NS:
            return None
        after = [e for e in self.events if e[0] >= since_ns]
        bad = [i for i, e in enumerate(after) if e[1] != "ok"]
        if not bad:
            return 0
        return after[bad[-1] + 1][0] - since_ns

    def wrong_reads(self) -> list[tuple[int, str, str]]:
        return [e for e in self.events if e[1] == "wrong"]


@dataclass
class Fleet:
    readers: list[Reader]

    def pump(self) -> None:
        for r in self.readers:
            r.pump()

    def wait_recovered(self, since_ns: int, timeout: float = 10.0, settle: float = 0.25) -> dict[str, float]:
        """Wait until every container reads correctly again after `since_ns` and stays so for `settle`
        seconds; returns id -> recovery in ms (0: it never noticed). Raises TimeoutError naming the laggards."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            now = time.monotonic_ns()
            rec = {r.id: r.recovery_ns(since_ns, now) for r in self.readers}
            if all(v is not None for v in rec.values()) and now - since_ns >= settle * 1e9:
                last_bad = max((e[0] for r in self.readers for e in r.events if e[1] != "ok"), default=0)
                if now - max(last_bad, since_ns) >= settle * 1e9:
                    return {k: v / 1e6 for k, v in rec.items() if v is not None}  # all are, checked above
            if time.monotonic() > deadline:
                late = {r.id: r.events[-3:] for r in self.readers if rec[r.id] is None}
                raise TimeoutError(f"containers not reading correctly {timeout}s after the fault: {late}")
            time.sleep(0.01)

    def counts(self, timeout: float = 5.0) -> tuple[int, int, int]:
        """Total (reads, failed, wrong) over every reader now (they run on this host: signalled by pid)."""
        for r in self.readers:
            r.counts = None
            r.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while any(r.counts is None for r in self.readers) and time.monotonic() < deadline:
            self.pump()
            time.sleep(0.005)
        got = [r.counts for r in self.readers if r.counts is not None]
        if len(got) != len(self.readers):
            raise TimeoutError("not every reader reported its counts")
        return (sum(c[0] for c in got), sum(c[1] for c in got), sum(c[2] for c in got))

    def failed_since(self, since_ns: int) -> dict[str, int]:
        """Per container, how many failure episodes began after `since_ns`."""
        self.pump()
        return {r.id: sum(1 for e in r.events if e[0] >= since_ns and e[1] == "err") for r in self.readers}

    def stop(self) -> dict[str, tuple[int, int, int]]:
        """SIGTERM every reader and collect (reads, failed, wrong) from each."""
        for r in self.readers:
            with contextlib.suppress(ProcessLookupError):
                r.proc.send_signal(signal.SIGTERM)
        out = {}
        for r in self.readers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.proc.wait(5)
            r.pump()
            if r.summary is not None:
                out[r.id] = r.summary
        return out

    def wrong_reads(self) -> dict[str, list]:
        self.pump()
        return {r.id: r.wrong_reads() for r in self.readers if r.wrong_reads()}


def attach_env(mountpoint: str, state_dir: str) -> dict[str, str]:
    return dict(os.environ, LXCFS_GUARD_MOUNTPOINT=mountpoint, LXCFS_GUARD_STATE_DIR=state_dir)


def _joins(cg: Any) -> Callable[[], None]:
    """What the reader runs before exec: move itself into its cgroup."""
    return lambda: cg.add(os.getpid())


@contextlib.contextmanager
def reader_fleet(
    n: int,
    mountpoint: str,
    state_dir: str,
    *,
    interval: float = 0.002,
    file: str = "/proc/meminfo",
    enter: Sequence[str] = (),
    run_in: Sequence[str] | None = None,
    base_mib: int = 64,
    cgroup: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None,
    attach_args: Sequence[str] = (),
) -> Iterator[Fleet]:
    """`n` containers attached to the filesystem at `mountpoint` and registered in `state_dir`, each with
    a reader looping (started and reading when the block begins). `enter` prefixes the container command
    (e.g. `nsenter -a -t BOXPID` to start them inside a systemd box); `run_in` prefixes the attach command
    the same way. `cgroup(limit_bytes)` makes each container's cgroup (an object with `.add(pid)`; default
    `make_cgroup`). Readers are stopped by pid and their cgroups removed on exit."""
    from lxcfs_guard.testing.cgroups import make_cgroup
    from lxcfs_guard.watchdog.status import alive  # noqa: F401 - fail early if the package is broken

    binary = os.path.join(os.path.dirname(sys.executable), "lxcfs-guard")
    stack = contextlib.ExitStack()
    readers: list[Reader] = []
    try:
        for i in range(n):
            limit_mib = base_mib + i
            cg = stack.enter_context(cgroup(limit_mib << 20) if cgroup else make_cgroup(memory=limit_mib << 20))
            argv = [
                *enter,
                "unshare",
                "-m",
                "--propagation",
                "private",
                sys.executable,
                os.path.abspath(__file__),
                file,
                str(limit_mib * 1024),
                str(interval),
            ]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=_joins(cg))
            readers.append(Reader(id=f"rd-{uuid.uuid4().hex[:8]}-{i}", proc=proc, expect_kb=limit_mib * 1024))
        for r in readers:
            assert r.proc.stdin is not None and r.proc.stdout is not None
            line = r.proc.stdout.readline()
            if not line.strip().isdigit():
                raise RuntimeError(f"reader {r.id} did not start: {line!r}")
            r.pid = int(line)
        for r in readers:
            cmd = [*(run_in or enter), binary, "attach", "--id", r.id, "--pid", str(r.pid), *attach_args]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=attach_env(mountpoint, state_dir))
            if p.returncode != 0:
                raise RuntimeError(f"attach {r.id} failed ({p.returncode}): {p.stdout}{p.stderr}")
        for r in readers:
            assert r.proc.stdin is not None
            r.proc.stdin.write(b"go\n")
            r.proc.stdin.flush()
        fleet = Fleet(readers)
        deadline = time.monotonic() + 10
        while not all(r.recovery_ns(0, time.monotonic_ns()) is not None for r in readers):
            fleet.pump()
            if time.monotonic() > deadline:
                raise RuntimeError(f"readers not reading correctly after attach: {[r.events[-2:] for r in readers]}")
            time.sleep(0.01)
        yield fleet
    finally:
        for r in readers:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.kill()
            with contextlib.suppress(Exception):
                r.proc.wait(5)
            for pipe in (r.proc.stdin, r.proc.stdout):
                if pipe is not None:
                    pipe.close()
        stack.close()


if __name__ == "__main__":  # pragma: no cover - the reader, inside its container
    _reader_main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
