"""Where an open file's rendered snapshot lives, so that whichever serving process gets a READ or a RELEASE
can answer it.

OPEN renders the content once and the READs of that file handle must all see those bytes (a file read in
7-byte chunks, or with pread at 0 after the end, is one consistent snapshot). With several workers on one
connection the kernel hands each READ to any of them, so the snapshot cannot live in the opener's heap.

The arena is one shared anonymous mapping made by the holder before it forks (MAP_SHARED, MAP_NORESERVE:
only pages written ever take memory, and a shared page counts once in the PSS of all processes). It has
one region per worker slot; a replacement worker takes over its dead predecessor's slot together with the
bookkeeping kept in that region, so the dead worker's snapshots stay readable and are reclaimed later.

A region: [meta][index of live blocks][ring]. Only the slot's own worker writes its meta, index and ring
(single writer, no locks); any worker reads a block, and marks it freed on RELEASE (one store into the
block's header, read later by the owner). The ring allocates circularly and never overwrites a block that
is still open: a block found pinned (not freed) where the ring wants to write is skipped and queued again,
and the ring grows (up to `RING_MAX`) when everything in it stays open (`top` keeps /proc/stat open and
re-reads it). So a snapshot is never overwritten while its file is open; if a header's generation does not
match the file handle anyway (a worker died between two bookkeeping stores, see `_requeue`), the read
fails with EIO rather than show other bytes. When even the largest ring is full of open files, OPEN fails
with ENFILE: a clear error instead of unbounded memory.

File handle (64 bits): slot (7) | generation (24) | block offset / 16 (32).

The worker that put a snapshot often answers its READs and RELEASE too (a lone worker always), so it also
keeps its own live snapshots in a dict by file handle: READ slices the bytes it already has and RELEASE marks
the header without looking the block up (in an in-process profile of a read's four requests, the arena's
lookups were a fifth of the Python time). The dict drops an entry when its RELEASE comes to this worker, when
a READ finds it released through another worker (its freed flag), or when the ring reclaims the block.
"""

from __future__ import annotations

import errno
import mmap
import struct

META = struct.Struct("<QQQQQ")  # ring_head, ring_limit, idx_head, idx_tail, generation
META_BYTES = 64
REC = struct.Struct("<QII")  # block offset, block size, generation
HDR = struct.Struct("<IIII")  # generation, data length, freed, unused
ALIGN = 16
IDX_CAP = 16384  # blocks tracked per slot (open files of one worker, plus freed ones not yet reclaimed)
RING_START = 1 << 20
RING_MAX = 16 << 20
MAX_SLOTS = 127
GEN_MASK = 0xFFFFFF


class ArenaFull(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENFILE, "snapshot arena full: too many files open at once")


def region_bytes(ring_max: int = RING_MAX) -> int:
    return META_BYTES + IDX_CAP * REC.size + ring_max


def make_mapping(slots: int, ring_max: int = RING_MAX) -> mmap.mmap:
    """The shared mapping for `slots` workers; call before forking them."""
    if not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"1..{MAX_SLOTS} worker slots, not {slots}")
    flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000)
    return mmap.mmap(-1, slots * region_bytes(ring_max), flags=flags)


class Arena:
    """One worker's view of the arena: it allocates in `slot` and reads any slot."""

    def __init__(self, mm: mmap.mmap, slot: int, ring_max: int = RING_MAX, ring_start: int = RING_START) -> None:
        self.mm = mm
        self.slot = slot
        self.ring_max = ring_max
        self.region = region_bytes(ring_max)
        self._meta_at = slot * self.region
        self._idx_at = self._meta_at + META_BYTES
        self._ring_at = self._idx_at + IDX_CAP * REC.size
        head, limit, ih, it, gen = META.unpack_from(mm, self._meta_at)
        if limit == 0:  # a fresh slot (a replacement continues its predecessor's bookkeeping)
            limit = min(ring_start, ring_max)
        self.head, self.limit, self.ih, self.it, self.gen = head, limit, ih, it, gen
        self._own: dict[int, bytes] = {}  # fh -> data of this worker's live snapshots (see the module doc)

    # -- any worker -----------------------------------------------------------------------------------
    def _locate(self, fh: int) -> tuple[int, int] | None:
        """(data start, length) of a live block, or None."""
        slot = fh >> 56
        if slot >= MAX_SLOTS or (slot + 1) * self.region > len(self.mm):
            return None
        at = slot * self.region + META_BYTES + IDX_CAP * REC.size + ((fh & 0xFFFFFFFF) << 4)
        gen, length, freed, _ = HDR.unpack_from(self.mm, at)
        if gen != (fh >> 32) & GEN_MASK or freed:
            return None
        return at + HDR.size, length

    def read(self, fh: int, off: int, size: int) -> bytes | None:
        """`size` bytes at `off` of the snapshot behind `fh`, or None if there is none."""
        own = self._own_live(fh)
        if own is not None:
            return own if off == 0 and size >= len(own) else own[off : off + size]
        loc = self._locate(fh)
        if loc is None:
            return None
        start, length = loc
        if off >= length:
            return b""
        return self.mm[start + off : start + min(length, off + size)]

    def get(self, fh: int) -> bytes | None:
        own = self._own_live(fh)
        if own is not None:
            return own
        loc = self._locate(fh)
        return None if loc is None else self.mm[loc[0] : loc[0] + loc[1]]

    def _own_live(self, fh: int) -> bytes | None:
        """Our copy of a snapshot of ours, unless its RELEASE went to another worker (its freed flag is set)."""
        own = self._own.get(fh)
        if own is not None and self.mm[self._freed_at(fh)]:
            del self._own[fh]
            return None
        return own

    def _freed_at(self, fh: int) -> int:
        """Where the freed flag of one of this slot's blocks is (HDR's third word)."""
        return self._ring_at + ((fh & 0xFFFFFFFF) << 4) + 8

    def free(self, fh: int) -> None:
        if self._own.pop(fh, None) is not None:  # ours and live: its header is where the handle says
            struct.pack_into("<I", self.mm, self._freed_at(fh), 1)
            return
        loc = self._locate(fh)
        if loc is not None:
            struct.pack_into("<I", self.mm, loc[0] - HDR.size + 8, 1)

    # -- the slot's own worker ------------------------------------------------------------------------
    def put(self, data: bytes) -> int:
        need = (HDR.size + len(data) + ALIGN - 1) // ALIGN * ALIGN
        off = self._reserve(need)
        self.gen = (self.gen + 1) & GEN_MASK or 1
        at = self._ring_at + off
        HDR.pack_into(self.mm, at, self.gen, len(data), 0, 0)
        self.mm[at + HDR.size : at + HDR.size + len(data)] = data
        self._push(off, need, self.gen)
        self.head = off + need
        self._save()
        fh = self._fh(off, self.gen)
        self._own[fh] = data
        return fh

    def _fh(self, off: int, gen: int) -> int:
        """The file handle of this slot's block at ring offset `off` (see the module doc)."""
        return (self.slot << 56) | (gen << 32) | (off >> 4)

    def live_blocks(self) -> int:
        return self.it - self.ih

    def _rec(self, i: int) -> tuple[int, int, int]:
        return REC.unpack_from(self.mm, self._idx_at + (i % IDX_CAP) * REC.size)

    def _push(self, off: int, size: int, gen: int) -> None:
        REC.pack_into(self.mm, self._idx_at + (self.it % IDX_CAP) * REC.size, off, size, gen)
        self.it += 1

    def _save(self) -> None:
        META.pack_into(self.mm, self._meta_at, self.head, self.limit, self.ih, self.it, self.gen)

    def _pinned(self, off: int, gen: int) -> bool:
        hgen, _, freed, _ = HDR.unpack_from(self.mm, self._ring_at + off)
        return hgen == gen and not freed

    def _reserve(self, need: int) -> int:
        if need > self.ring_max:
            raise ArenaFull()
        skips = 0
        while True:
            while self.ih < self.it and self._drop_front():
                pass  # reclaim released (or stale) blocks at the front
            if self.ih == self.it:  # nothing open: start over at the beginning
                self.head = 0
                while need > self.limit:
                    self._grow()
                return 0
            if self.it - self.ih >= IDX_CAP:
                raise ArenaFull()  # IDX_CAP files of this worker open at once
            o0 = self._rec(self.ih)[0]
            if o0 < self.head:  # the oldest block is behind the head: free space runs to the end
                if self.head + need <= self.limit:
                    return self.head
                self.head = 0  # wrap
            if self.head + need <= o0:
                return self.head
            # the oldest block, still open, is in the way: jump past it
            self._requeue()
            skips += 1
            if skips > 2 * (self.it - self.ih) + 2:
                self._grow()
                skips = 0

    def _drop_front(self) -> bool:
        """Reclaim the oldest block if its file was released (or its record is stale); True if it was."""
        off, _, gen = self._rec(self.ih)
        if self._pinned(off, gen):
            return False
        self.ih += 1
        if self._own:  # released through another worker: forget our copy too
            self._own.pop(self._fh(off, gen), None)
        return True

    def _requeue(self) -> None:
        """The oldest block is still open and the ring head is at or before it: the head jumps past it (over
        free space only) and it becomes the newest. Pushed before it is popped, so a crash in between leaves
        it tracked twice (the second copy is dropped as stale once the block is freed), never not at all."""
        off, size, gen = self._rec(self.ih)
        self._push(off, size, gen)
        self.ih += 1
        self.head = off + size
        self._save()

    def _grow(self) -> None:
        if self.limit >= self.ring_max:
            raise ArenaFull()
        self.limit = min(self.limit * 2, self.ring_max)
        self._save()


class LocalSnapshots:
    """The single-process stand-in (unit tests, tools): snapshots in a dict, same interface as Arena."""

    def __init__(self) -> None:
        self._open: dict[int, bytes] = {}
        self._next = 0

    def put(self, data: bytes) -> int:
        self._next += 1
        self._open[self._next] = data
        return self._next

    def read(self, fh: int, off: int, size: int) -> bytes | None:
        data = self._open.get(fh)
        if data is None:
            return None
        if off == 0 and size >= len(data):
            return data
        return data[off : off + size]

    def get(self, fh: int) -> bytes | None:
        return self._open.get(fh)

    def free(self, fh: int) -> None:
        self._open.pop(fh, None)

    def live_blocks(self) -> int:
        return len(self._open)
