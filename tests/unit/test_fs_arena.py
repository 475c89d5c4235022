"""The snapshot arena (fs/arena.py): what one worker puts there any other reads, byte for byte; a file kept
open is never overwritten, however much the ring turns; a replacement worker continues its dead
predecessor's bookkeeping; a full arena refuses with ENFILE instead of growing without bound."""

from __future__ import annotations

import errno
import os
import random

import pytest

from lxcfs_guard.fs.arena import Arena, ArenaFull, LocalSnapshots, make_mapping

RING = 1 << 16


def arenas(slots: int = 2) -> list[Arena]:
    mm = make_mapping(slots, ring_max=RING)
    return [Arena(mm, i, ring_max=RING, ring_start=1 << 12) for i in range(slots)]


def test_another_worker_reads_and_releases_what_one_put() -> None:
    a, b = arenas()
    fh = a.put(b"MemTotal: 1 kB\n")
    assert fh >> 56 == 0
    assert b.get(fh) == b"MemTotal: 1 kB\n"
    assert b.read(fh, 3, 5) == b"Total"
    assert b.read(fh, 100, 5) == b""
    b.free(fh)
    assert a.get(fh) is None and b.read(fh, 0, 10) is None


def test_the_owners_copies_follow_releases_through_any_worker() -> None:
    """The owner answers its own snapshots from a local copy: a release through another worker ends that
    copy too (read or reclaimed), so the copies neither outlive their files nor pile up."""
    a, b = arenas()
    fhs = [a.put(b"x" * 100) for _ in range(50)]
    assert a.read(fhs[0], 0, 10) == b"x" * 10  # the owner's own copy
    for fh in fhs[:25]:
        a.free(fh)
    for fh in fhs[25:]:
        b.free(fh)  # the other worker's release: only the shared header knows
    assert a.read(fhs[30], 0, 10) is None
    for _ in range(10):
        a.free(a.put(b"y" * 100))  # the ring reclaims the released blocks as it goes
    assert len(a._own) == 0 and a.live_blocks() <= 1  # the last one goes at the next put


def test_open_snapshots_survive_any_amount_of_churn_and_the_ring_grows_for_them() -> None:
    a, b = arenas()
    rnd = random.Random(7)
    live: dict[int, bytes] = {}
    kept: set[int] = set()
    for i in range(15_000):
        data = os.urandom(rnd.randint(0, 900))
        fh = a.put(data)
        live[fh] = data
        if rnd.random() < 0.01 and len(kept) < 40:  # like top's /proc/stat: open for a long time
            kept.add(fh)
        while len(live) - len(kept) > 10:  # the others are read and closed soon after
            fh = rnd.choice([f for f in live if f not in kept])
            assert b.get(fh) == live[fh], i
            b.free(fh)
            del live[fh]
        if kept and rnd.random() < 0.002:
            fh = kept.pop()
            assert b.get(fh) == live.pop(fh)
            b.free(fh)
    assert all(b.get(fh) == data for fh, data in live.items())
    assert a.limit > 1 << 12  # it grew to keep the long-open ones


def test_a_replacement_worker_keeps_its_predecessors_open_snapshots() -> None:
    mm = make_mapping(1, ring_max=RING)
    dead = Arena(mm, 0, ring_max=RING, ring_start=1 << 12)
    kept = {dead.put(os.urandom(300)): None for _ in range(5)}
    kept = {fh: dead.get(fh) for fh in kept}
    new = Arena(mm, 0, ring_max=RING, ring_start=1 << 12)
    for _ in range(2_000):
        new.free(new.put(os.urandom(500)))
    assert all(new.get(fh) == data for fh, data in kept.items())


def test_a_full_arena_refuses_with_enfile() -> None:
    (a,) = arenas(1)
    with pytest.raises(ArenaFull) as e:
        for _ in range(RING):
            a.put(b"x" * 1000)  # never released
    assert e.value.errno == errno.ENFILE
    with pytest.raises(ArenaFull):
        a.put(b"x" * (RING + 1))


def test_local_snapshots_have_the_same_interface() -> None:
    s = LocalSnapshots()
    fh = s.put(b"abc")
    assert s.read(fh, 1, 10) == b"bc" and s.get(fh) == b"abc"
    s.free(fh)
    assert s.read(fh, 0, 1) is None
