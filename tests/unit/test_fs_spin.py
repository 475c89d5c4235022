"""fs/spin.py: which callers make a worker spin, and what ends a spin.

Real poll; a pipe stands in for the device (readable while a byte, a queued request, is in it). Through a
real mount: tests/integration/test_serve_workers.py.
"""

from __future__ import annotations

import os
import select
import time

import pytest

from lxcfs_guard.fs.spin import HOT_GAP, HOT_RUN, SPIN, Spin


def readable(fd: int) -> select.poll:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return p


def hot(spin: Spin, pid: int = 100) -> None:
    for _ in range(HOT_RUN):
        spin.ready()
        spin.took(pid, HOT_GAP / 10)


def spins(spin: Spin) -> bool:
    """Whether ready() polled an empty device until SPIN ran out."""
    started = time.monotonic()
    spin.ready()
    return spin.missed and time.monotonic() - started >= SPIN


def test_a_caller_in_a_tight_loop_makes_the_worker_spin(device) -> None:
    spin = Spin(readable(device[0]))
    for _ in range(HOT_RUN - 1):
        spin.ready()
        spin.took(100, HOT_GAP / 10)
    assert not spins(spin), "spun before HOT_RUN requests"
    spin.took(100, HOT_GAP / 10)
    assert spins(spin)


def test_the_kernels_release_on_the_callers_behalf_keeps_the_loop(device) -> None:
    spin = Spin(readable(device[0]))
    for i in range(HOT_RUN):
        spin.ready()
        spin.took(0 if i % 4 == 3 else 100, HOT_GAP / 10)  # RELEASE of a closed file comes with pid 0
    assert spins(spin)


@pytest.mark.parametrize(
    "other",
    [pytest.param((200, HOT_GAP / 10), id="another-caller"), pytest.param((100, 2 * HOT_GAP), id="a-pause")],
)
def test_another_caller_or_a_pause_ends_the_loop(device, other) -> None:
    spin = Spin(readable(device[0]))
    hot(spin)
    spin.ready()
    spin.missed = False  # as if the request had come during the spin
    spin.took(*other)
    assert not spins(spin)


def test_a_spin_that_finds_nothing_ends_the_loop(device) -> None:
    """A caller that pauses between reads costs one spin, not one per request."""
    spin = Spin(readable(device[0]))
    hot(spin)
    assert spins(spin)
    spin.took(100, SPIN + 1e-6)
    assert not spins(spin)
    assert spin.run == 1  # counting again from here


def test_a_request_already_waiting_ends_the_spin_at_once(device) -> None:
    r, w = device
    spin = Spin(readable(r))
    hot(spin)
    os.write(w, b"x")
    spin.ready()
    assert not spin.missed
    os.read(r, 1)
