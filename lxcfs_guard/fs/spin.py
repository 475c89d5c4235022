"""Why a worker busy-waits, briefly, between the requests of a caller that reads in a tight loop.

A read of one of our files is three requests its caller waits for in turn (OPEN, READ, and the READ that
finds the end). Between two of them a worker would sleep in read(2) until the caller's next request woke
it, and waking a sleeping CPU is slow on a VM (an interrupt into an idle vCPU): a caller that reads back to
back pays that three times per read. Measured with bench/read_rate.py, meminfo, `--cache-ttl 0`, one
reader, LXCFS 5.0.3 in the same run: 0.82-0.87x LXCFS's rate with the worker sleeping between requests,
1.14-1.39x (four runs) with it polling the device for up to 100 us first.

Spinning costs CPU wherever the next request does not come that soon. On a busy node (bench/fleet.py,
N=200: hundreds of callers each reading a few files once a second) spinning after every reply cost about
10% more CPU per read and did not move p99. So a worker spins only for one caller in a tight loop: its
last `HOT_RUN` requests all came from the same process (or from the kernel on its behalf: the RELEASE of a
closed file), each within `HOT_GAP` of the worker being ready for it. A reader that reads six files once a
second brings 24 requests a pass and never gets there. A spin that finds nothing within `SPIN` ends the
run, so a caller that pauses between reads costs at most one spin. The spin yields the CPU on every turn:
a caller that shares the worker's CPU runs at once instead of after the spin.

Only a lone worker (`--workers 1`, the default on a one-CPU machine) spins. With two workers each waiting in
read(2), the kernel hands the caller's next request to the other one, and the spin made no difference
(`--cache-ttl 0`, one reader: 1.33x and 1.35x LXCFS's rate with it, 1.31x and 1.47x without).
"""

from __future__ import annotations

import os
import select
import time

SPIN = 100e-6  # seconds a worker polls for the next request of a caller in a tight loop
HOT_GAP = 500e-6  # a request that came within this of the worker being ready continues a tight loop
HOT_RUN = 32  # requests in a row from one caller, each within HOT_GAP, that make a tight loop


class Spin:
    """One worker's spin: `ready()` before each read(2) of the device, `took()` after it. `queue` polls the
    device for POLLIN."""

    __slots__ = ("queue", "pid", "run", "missed")

    def __init__(self, queue: select.poll) -> None:
        self.queue = queue
        self.pid = 0  # the caller of the last request
        self.run = 0  # requests in a row from it, each within HOT_GAP
        self.missed = False  # the last spin found no request

    def ready(self) -> float:
        """The worker is ready for its next request: poll for it first while a tight loop is on. Returns the
        time the worker became ready."""
        clock = time.monotonic
        now = clock()
        if self.run >= HOT_RUN:
            end = now + SPIN
            poll, yield_cpu = self.queue.poll, os.sched_yield
            while not poll(0):
                if clock() >= end:
                    self.missed = True
                    break
                yield_cpu()
        return now

    def took(self, pid: int, gap: float) -> None:
        """A request from `pid` (0: the kernel's) came `gap` seconds after the worker was ready for it."""
        if gap > HOT_GAP:
            self.run = 0
        elif self.missed or (pid and pid != self.pid):
            self.run = 1  # the first of a new run
        else:
            self.run += 1
        self.missed = False
        if pid:
            self.pid = pid
