"""The fork pool: forked workers, each running a few threads, that take namespaces from a queue and run
steps.run_job on each; the parent owns the deadlines and replaces a worker that overruns one.

A worker is a forked process running THREADS threads; each thread unshares its fs_struct (so it may setns
on its own) and takes namespaces from a shared queue. Detaching a stale mount waits for an RCU grace
period (tens of microseconds when the other CPUs are busy, as they are right after a daemon restart);
threads waiting at once share one grace period, which is most of the gain. Python work is serialised by
the GIL but small. The worker tells the parent when a namespace starts and how it ended.
"""

from __future__ import annotations

import errno
import marshal
import os
import select
import time
from collections.abc import Sequence

from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.remount import children
from lxcfs_guard.remount.plan import Job
from lxcfs_guard.remount.report import FAILED, NamespaceReport, TargetError
from lxcfs_guard.remount.steps import Context, run_job

THREADS = 4


def _frame(kind: bytes, index: int, body: bytes = b"") -> bytes:
    return kind + index.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body


def _encode(rep: NamespaceReport) -> bytes:
    return marshal.dumps(
        (
            rep.id,
            rep.pid,
            rep.mntns,
            rep.action,
            rep.repaired,
            [(e.target, e.errno, e.message) for e in rep.errors],
            rep.duration_ms,
            rep.detached,
        )
    )


def _decode(body: bytes) -> NamespaceReport:
    cid, pid, mntns, action, repaired, errors, ms, detached = marshal.loads(body)
    return NamespaceReport(cid, pid, mntns, action, repaired, [TargetError(*e) for e in errors], ms, detached)


def _run_job_safe(ctx: Context, job: Job) -> NamespaceReport:
    try:
        return run_job(ctx, job)
    except Exception as e:  # noqa: BLE001 - report it against the namespace, keep going
        return NamespaceReport(
            job.id,
            job.pid,
            job.mntns,
            FAILED,
            errors=[TargetError("-", getattr(e, "errno", None) or errno.EIO, f"{type(e).__name__}: {e}")],
        )


def _worker_main(ctx: Context, jobs: Sequence[Job], w: int, threads: int) -> None:  # pragma: no cover - child
    code = 0
    try:
        import _thread
        import sys

        # A thread back from a syscall waits for the GIL; by default the running thread keeps it for up
        # to 5 ms. Our threads spend their time in short syscalls: hand it over fast.
        sys.setswitchinterval(0.0001)

        ctx.fd_dir = os.open("self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=ctx.proc_fd)
        lock = _thread.allocate_lock()
        finished = _thread.allocate_lock()
        finished.acquire()
        queue = iter(range(len(jobs)))
        running = [min(threads, len(jobs))]

        def send(data: bytes) -> None:  # with `lock` held
            while data:
                data = data[os.write(w, data) :]

        def loop() -> None:
            try:
                sc.unshare(sc.CLONE_FS)  # our own root and cwd: this thread may enter a namespace alone
                while True:
                    with lock:
                        i = next(queue, None)
                        if i is None:
                            return
                        send(_frame(b"S", i))
                    body = _encode(_run_job_safe(ctx, jobs[i]))
                    with lock:
                        send(_frame(b"D", i, body))
            finally:
                with lock:
                    running[0] -= 1
                    if running[0] == 0:
                        finished.release()

        for _ in range(running[0]):
            _thread.start_new_thread(loop, ())
        finished.acquire()
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child: it exits 1
        code = 1
    finally:
        os._exit(code)


class _Worker:
    """The parent's view of one worker: its queue, which namespaces it started when, which it finished."""

    __slots__ = ("pid", "pidfd", "fd", "jobs", "started", "done", "buf", "spawned")

    def __init__(self, ctx: Context, jobs: Sequence[Job], threads: int) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            children.quiet()
            os.close(r)
            _worker_main(ctx, jobs, w, threads)
        os.close(w)
        self.pidfd = children.pidfd(pid)
        self.pid, self.fd, self.jobs, self.buf = pid, r, jobs, b""
        self.started: dict[int, float] = {}
        self.done: set[int] = set()
        self.spawned = time.monotonic()

    def reap(self, killed: bool) -> bool:
        """Reap the worker (SIGKILLed first if `killed`) with a deadline: a worker stuck in the kernel (a
        move_mount waiting for an inode lock a container holds) cannot die and is left behind. True if
        reaped."""
        os.close(self.fd)
        if not killed and children.wait(self.pid, self.pidfd, time.monotonic() + 2.0):
            os.close(self.pidfd)
            return True
        return children.kill_and_reap(self.pid, self.pidfd, grace=0.5)

    def in_flight(self) -> list[int]:
        return [i for i in self.started if i not in self.done]

    def feed(self, data: bytes) -> list[tuple[int, NamespaceReport]]:
        """Take bytes from the pipe; return the reports they complete."""
        self.buf += data
        out = []
        while len(self.buf) >= 9 and len(self.buf) >= 9 + (size := int.from_bytes(self.buf[5:9], "little")):
            kind, i, body = self.buf[:1], int.from_bytes(self.buf[1:5], "little"), self.buf[9 : 9 + size]
            self.buf = self.buf[9 + size :]
            if kind == b"S":
                self.started[i] = time.monotonic()
            else:
                self.done.add(i)
                out.append((i, _decode(body)))
        return out


def run_jobs(
    ctx: Context,
    jobs: Sequence[Job],
    workers: int,
    timeout: float,
    threads: int = THREADS,
    stuck: dict[int, int] | None = None,
) -> list[NamespaceReport]:
    """Run `jobs` on up to `workers` forked workers of `threads` threads; each namespace gets `timeout`
    seconds from its start. A worker with a namespace past its deadline is killed: that namespace fails
    with ETIMEDOUT, any other it had under way fails as interrupted (a later run finishes it: see UNCOVER),
    and a new worker takes the ones it had not started. A killed worker that cannot die (stuck in the
    kernel) is left behind; `stuck` gets {mntns: its pid} for the namespaces it had under way. Reports
    come back in the order of `jobs`."""
    results: dict[int, NamespaceReport] = {}
    index = {id(job): i for i, job in enumerate(jobs)}
    active: dict[int, _Worker] = {}
    poller = select.poll()

    def spawn(queue: Sequence[Job]) -> None:
        if queue:
            wk = _Worker(ctx, queue, threads)
            active[wk.fd] = wk
            poller.register(wk.fd, select.POLLIN)

    def fail(job: Job, errno_: int, message: str, ms: float = 0.0) -> None:
        results[index[id(job)]] = NamespaceReport(
            job.id, job.pid, job.mntns, FAILED, errors=[TargetError("-", errno_, message)], duration_ms=ms
        )

    def retire(wk: _Worker, late: int | None) -> None:
        poller.unregister(wk.fd)
        del active[wk.fd]
        reaped = wk.reap(killed=late is not None)
        now = time.monotonic()
        why = "" if reaped else f"; worker pid {wk.pid} cannot die (state {children.state(wk.pid) or '?'}): left behind"
        for i in wk.in_flight():
            if not reaped and stuck is not None:
                stuck[wk.jobs[i].mntns] = wk.pid
            if late is not None and wk.started[i] + timeout <= now:
                fail(
                    wk.jobs[i],
                    errno.ETIMEDOUT,
                    f"this namespace did not finish within {timeout:g} s; worker killed{why}",
                    timeout * 1000,
                )
            elif late is not None:
                fail(wk.jobs[i], errno.EINTR, "interrupted: its worker was killed for another namespace's deadline")
            else:
                fail(wk.jobs[i], errno.EIO, "its worker exited before finishing it")
        rest = [job for i, job in enumerate(wk.jobs) if i not in wk.started]
        if wk.done or (late is not None and late >= 0):
            spawn(rest)
        else:  # the worker never finished anything: do not loop on it
            for job in rest:
                fail(job, errno.EIO, "the worker died before repairing anything")

    n = max(1, min(workers, len(jobs)))
    for k in range(n):
        spawn(jobs[k::n])
    while active:
        now = time.monotonic()
        deadlines = [t + timeout for wk in active.values() for i, t in wk.started.items() if i not in wk.done]
        deadlines += [wk.spawned + timeout for wk in active.values() if not wk.started]
        for fd, _ in poller.poll(max(0.0, min(deadlines, default=now + timeout) - now) * 1000):
            wk = active[fd]
            data = os.read(fd, 1 << 16)
            if not data:
                retire(wk, None)
                continue
            for i, rep in wk.feed(data):
                results[index[id(wk.jobs[i])]] = rep
        now = time.monotonic()
        for wk in list(active.values()):
            late = next((i for i, t in wk.started.items() if i not in wk.done and t + timeout <= now), None)
            if late is None and not wk.started and wk.spawned + timeout <= now:
                late = -1
            if late is not None:
                retire(wk, late)
    return [results[i] for i in range(len(jobs))]
