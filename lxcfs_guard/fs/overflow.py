"""How the workers after the first share the load: they serve only when the first worker falls behind or
stalls.

Why not let every worker wait in read(2) on the device, as the kernel allows (it hands each request to one
waiting reader): it then gives consecutive requests to different workers, so each request runs in a
process whose caches (the CPU's, and ours: callers, cgroup facts, rendered views) were last warmed by
other requests. Measured with bench/fleet.py at N=200 (1,200 reads/s on 2 CPUs, LXCFS 5.0.3 in the same
run): two workers both waiting in read(2) cost 287-326 ms of CPU per 1000 reads, one worker alone 223-243
ms, LXCFS 290-301 ms. But one worker alone has one CPU (N=1000 needs 1.2), and while it is stuck in one
request (a hung cgroup file, SIGSTOP, a long preemption) nobody else would answer.

So the first worker (slot 0, the "primary") waits in a blocking read(2), as a lone worker would, and every
other worker (an "overflow" worker) reads its clone of the device with O_NONBLOCK. Two things wake one:
- the kick (an eventfd). The primary tells from how long each read(2) took whether it waited for that
  request (it was idle) or found it queued (it is busy). Busy without a pause for `KICK_AFTER` seconds,
  it kicks, unless an overflow worker is already serving. A short burst wakes nobody.
- the stall watch. While the mount has traffic, an overflow worker looks every `WATCH` seconds (times its
  slot number, so that many workers do not all look) at the primary's request count: if it stood still
  and a request is waiting, the primary is stuck, and the overflow worker serves every request (waiting
  on the device itself) until the count moves again. After `QUIET_WATCHES` looks at an idle mount it
  waits for the next request instead, so an idle daemon takes no CPU.
A woken worker serves requests until the queue is empty.

Why not a fine timer instead of the kick: a timer wake-up costs about 40 us of CPU on this VM, and looking
at the queue every millisecond cost more CPU than the requests it took (measured: 15-18% of the daemon's
CPU at N=200, for 4% of the requests). A look every 10 ms costs about 4 ms of CPU a second.

A dead primary cannot kick: the holder marks it down (`Shared.primary_down`), and until a replacement marks
itself up the overflow workers wait on the device itself and serve every request.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select

KICK_AFTER = 0.0005  # seconds the primary is busy without a pause before it kicks an overflow worker
WAITED = 20e-6  # a read(2) that took longer than this waited for its request: the primary was idle
WATCH_MS = 10  # the stall watch's period (times the worker's slot)
QUIET_WATCHES = 3  # looks at an idle mount before an overflow worker waits for the next request instead
DOWN_RECHECK_MS = 100  # with the primary down, how often an overflow worker looks whether it is back

_ACTIVE, _PRIMARY_UP, _COUNT = 0, 1, 2  # words of the shared page


class Shared:
    """What the workers share about the load: a page (made before they fork) and the kick eventfd."""

    def __init__(self) -> None:
        self._mm = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.words = memoryview(self._mm).cast("Q")
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def kick(self) -> None:
        """Wake the overflow workers (the holder, when the primary died; the primary, when behind)."""
        os.eventfd_write(self.kick_fd, 1)

    def close(self) -> None:
        os.close(self.kick_fd)
        self.words.release()
        self._mm.close()

    def primary_down(self) -> None:
        self.words[_PRIMARY_UP] = 0
        self.kick()


class Primary:
    """The primary's side: one call per request it read, with the time its read(2) started and ended."""

    __slots__ = ("shared", "words", "queue", "busy_since")

    def __init__(self, shared: Shared, dev_fd: int) -> None:
        self.shared = shared
        self.words = shared.words
        self.queue = select.poll()
        self.queue.register(dev_fd, select.POLLIN)
        self.busy_since = 0.0
        self.words[_PRIMARY_UP] = 1

    def read(self, started: float, ended: float) -> None:
        words = self.words
        words[_COUNT] += 1
        if ended - started > WAITED or not self.queue.poll(0):
            # it waited for this request, or none waits behind it (one reader in a loop): no backlog
            self.busy_since = ended
        elif ended - self.busy_since > KICK_AFTER and not words[_ACTIVE]:
            words[_ACTIVE] = 1  # one kick per stretch; the woken worker clears it when the queue is empty
            self.shared.kick()


class Overflow:
    """An overflow worker's wait whenever its non-blocking read finds the queue empty."""

    __slots__ = ("kick_fd", "words", "watch_ms", "kick", "device", "either", "last", "quiet", "stalled")

    def __init__(self, dev_fd: int, shared: Shared, slot: int = 1) -> None:
        self.kick_fd = shared.kick_fd
        self.words = shared.words
        self.watch_ms = WATCH_MS * max(1, slot)
        self.kick = select.poll()
        self.kick.register(shared.kick_fd, select.POLLIN)
        self.device = select.poll()
        self.device.register(dev_fd, select.POLLIN)
        self.either = select.poll()
        self.either.register(shared.kick_fd, select.POLLIN)
        self.either.register(dev_fd, select.POLLIN)
        self.last = -1  # the primary's request count at the last look
        self.quiet = QUIET_WATCHES  # looks in a row that saw no traffic (start as on an idle mount)
        self.stalled = False  # the primary served nothing for a watch while a request waited

    def wait(self) -> None:
        """Return when this worker should read: after a kick, while the primary is stuck or down. Signals
        interrupt it (SIGTERM ends the worker here)."""
        words = self.words
        words[_ACTIVE] = 0
        while True:
            if not words[_PRIMARY_UP]:  # serve every request until a new primary is up
                self.either.poll(DOWN_RECHECK_MS)
                self._take_kick()
                return
            if self.quiet >= QUIET_WATCHES:  # an idle mount: sleep until a kick or a request
                self.either.poll()
                self.quiet, self.last = 0, words[_COUNT]
                if self._take_kick():
                    return
                continue
            (self.either if self.stalled else self.kick).poll(self.watch_ms)
            if self._take_kick():
                return
            beat = words[_COUNT]
            if beat != self.last:  # the primary serves (again)
                self.last, self.quiet, self.stalled = beat, 0, False
            elif self.device.poll(0):  # a request waits and the primary served nothing for a whole watch
                self.stalled = True
                return
            else:
                self.quiet += 1

    def _take_kick(self) -> bool:
        if not self.kick.poll(0):
            return False
        with contextlib.suppress(BlockingIOError):  # another overflow worker took it first; both serve
            os.eventfd_read(self.kick_fd)
        self.words[_ACTIVE] = 1
        return True
