"""fs/overflow.py: when the primary asks for help, and when an overflow worker serves, sleeps or takes over.

Real eventfd and poll; a pipe stands in for the device (poll reports it readable while a byte, a queued
request, is in it). The end-to-end behaviour through a real mount is in tests/integration/test_serve_workers.py.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

import pytest

from lxcfs_guard.fs import overflow
from lxcfs_guard.fs.overflow import KICK_AFTER, Overflow, Primary, Shared


@pytest.fixture
def shared() -> Iterator[Shared]:
    s = Shared()
    yield s
    s.close()


def kicked(shared: Shared) -> bool:
    p = select.poll()
    p.register(shared.kick_fd, select.POLLIN)
    return bool(p.poll(0))


def test_the_primary_kicks_once_it_has_been_busy_with_requests_waiting(device, shared) -> None:
    r, w = device
    primary = Primary(shared, r)
    primary.read(0.0, 1.0)  # waited a second for this request: idle until now
    os.write(w, b"x")  # a request waits behind the one in hand
    for quarter in (1, 2, 3):
        t = 1.0 + quarter * KICK_AFTER / 4
        primary.read(t, t + 1e-6)  # found queued: no wait
        assert not kicked(shared), f"kicked after {quarter}/4 of KICK_AFTER"
    t = 1.0 + 1.5 * KICK_AFTER
    primary.read(t, t + 1e-6)
    assert kicked(shared)
    assert os.eventfd_read(shared.kick_fd) == 1
    primary.read(t + 1e-5, t + 1e-5)  # still busy: the overflow worker already has its kick
    assert not kicked(shared)


def test_a_primary_that_keeps_up_never_kicks(device, shared) -> None:
    """One reader in a loop: every request is read at once, but none waits behind it."""
    r, _ = device
    primary = Primary(shared, r)
    for i in range(100):
        primary.read(i * 1e-4, i * 1e-4 + 1e-6)
    assert not kicked(shared)


def test_a_primary_that_waits_between_requests_never_kicks(device, shared) -> None:
    r, w = device
    os.write(w, b"x")
    primary = Primary(shared, r)
    for i in range(100):
        primary.read(i * 1e-3, i * 1e-3 + 5e-4)  # each read(2) waited half a millisecond
    assert not kicked(shared)


def _wait_in_thread(o: Overflow) -> threading.Thread:
    t = threading.Thread(target=o.wait, daemon=True)
    t.start()
    return t


def test_an_overflow_worker_sleeps_on_an_idle_mount_until_kicked(device, shared) -> None:
    r, _ = device
    Primary(shared, r)
    o = Overflow(r, shared)
    t = _wait_in_thread(o)
    t.join(0.2)
    assert t.is_alive()
    shared.kick()
    t.join(2)
    assert not t.is_alive()
    assert not kicked(shared)  # it took the kick


def test_an_overflow_worker_leaves_waiting_requests_to_a_primary_that_serves(device, shared) -> None:
    r, w = device
    os.write(w, b"x")  # always a request waiting
    primary = Primary(shared, r)
    o = Overflow(r, shared)
    stop = time.monotonic() + 0.3
    t = _wait_in_thread(o)
    while time.monotonic() < stop:
        primary.read(0.0, 1.0)  # the primary serves (a request it waited for: no kick)
        time.sleep(0.001)
    assert t.is_alive()
    shared.kick()
    t.join(2)


def test_an_overflow_worker_takes_over_a_stuck_primary(device, shared) -> None:
    r, w = device
    primary = Primary(shared, r)
    o = Overflow(r, shared)
    primary.read(0.0, 1.0)
    os.write(w, b"x")  # a request waits, and the primary serves nothing from now on
    started = time.monotonic()
    t = _wait_in_thread(o)
    t.join(2)
    assert not t.is_alive()
    assert o.stalled
    assert time.monotonic() - started < 5 * overflow.WATCH_MS / 1000 + 0.1


def test_with_the_primary_down_an_overflow_worker_serves_every_request(device, shared) -> None:
    r, w = device
    Primary(shared, r)
    o = Overflow(r, shared)
    shared.primary_down()  # what the holder does when the primary dies
    o.wait()  # the kick
    assert not kicked(shared)
    os.write(w, b"x")
    started = time.monotonic()
    o.wait()
    assert time.monotonic() - started < 0.05  # woken by the request itself
    os.read(r, 1)
    Primary(shared, r)  # a replacement is up: back to kicks only
    t = _wait_in_thread(o)
    t.join(overflow.DOWN_RECHECK_MS / 1000 * 3)
    assert t.is_alive()
    shared.kick()
    t.join(2)
