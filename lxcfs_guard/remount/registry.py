"""The registry: which containers lxcfs-guard bound files into, and how (`<state-dir>/registry.json`).

Discovery already finds every bind the kernel shows; the registry adds what the kernel cannot tell:
*identity* (a pid is the container we bound only while its start time and mount-namespace inode are the ones
recorded here, so a reused pid is never mistaken for it) and *intent* (the binds that should exist, so one the
container lost or replaced is noticed and, if it is now a symlink or a directory, refused and reported).

File format (JSON, schema 1)::

    {"schema": 1, "containers": {"<id>": {"pid": 123, "start_time": 456789, "mntns": 4026532999,
        "binds": [{"source": "proc/meminfo", "target": "/proc/meminfo", "flags": "ro,nosuid,nodev"}]}}}

Writes are atomic (temp file + fsync + rename + fsync of the directory) and every write (a read-modify-write,
setting a bad entry or a corrupt file aside) runs under an flock on `registry.lock`, taken with a deadline,
so the OCI hook, `attach` and `remount` (which prunes gone containers) can run at once and none waits
forever. The state directory is 0700 and the files 0600 (kernel.files): no other user can read the registry
or hold its lock. Entries are validated one by one: a bad one is set aside (`registry.json.rejected-<time>`)
with a warning and the others are kept; a file that cannot be parsed at all is moved aside
(`registry.json.corrupt-<time>`) and the caller carries on with discovery alone: a damaged registry must
never stop a repair.

Plain classes with __slots__ rather than dataclasses: `remount` imports this on the recovery path, and
importing dataclasses costs ~5 ms of the 100 ms budget.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterable, Iterator

from lxcfs_guard.kernel.files import LockTimeout, lock, open_lock, open_private, private_dir, write_atomic

SCHEMA = 1
FILENAME = "registry.json"
LOCKNAME = "registry.lock"
LOCK_TIMEOUT = 10.0  # seconds; the supervisor's loop passes a much shorter one
MAX_BYTES = 64 << 20  # a registry of 100 000 containers is ~40 MB


class Bind:
    """One file bound into a container: `source` relative to the filesystem's root ("proc/meminfo"),
    `target` absolute inside the container's root ("/proc/meminfo"), `flags` the per-mount options the bind
    should carry ("ro,nosuid,nodev"; empty = whatever the live mount has)."""

    __slots__ = ("source", "target", "flags")

    def __init__(self, source: str, target: str, flags: str = "") -> None:
        self.source = source.lstrip("/")
        self.target = "/" + target.lstrip("/")
        self.flags = flags

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "target": self.target, "flags": self.flags}

    @classmethod
    def from_obj(cls, obj: object) -> Bind:
        """From the JSON form, or from a (source, target[, flags]) tuple as the OCI hook passes them."""
        if isinstance(obj, Bind):
            return obj
        if isinstance(obj, dict):
            return cls(str(obj["source"]), str(obj["target"]), str(obj.get("flags", "")))
        if isinstance(obj, (tuple, list)) and len(obj) in (2, 3):
            return cls(*(str(x) for x in obj))
        raise ValueError(f"not a bind: {obj!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bind) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Bind({self.source!r}, {self.target!r}, {self.flags!r})"


class Entry:
    """One registered container: its id, its init's pid, that pid's start time (clock ticks since boot,
    /proc/PID/stat field 22), the inode of its mount namespace, and its binds."""

    __slots__ = ("id", "pid", "start_time", "mntns", "binds")

    def __init__(self, id: str, pid: int, start_time: int, mntns: int, binds: Iterable[object] = ()) -> None:
        self.id = id
        self.pid = int(pid)
        self.start_time = int(start_time)
        self.mntns = int(mntns)
        self.binds = tuple(Bind.from_obj(b) for b in binds)

    def to_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "mntns": self.mntns,
            "binds": [b.to_dict() for b in self.binds],
        }

    @classmethod
    def from_dict(cls, id: str, obj: dict) -> Entry:
        return cls(id, obj["pid"], obj["start_time"], obj["mntns"], obj.get("binds", ()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (self.id, self.to_dict()) == (other.id, other.to_dict())

    def __repr__(self) -> str:
        return (
            f"Entry({self.id!r}, pid={self.pid}, start_time={self.start_time}, mntns={self.mntns}, "
            f"binds={len(self.binds)})"
        )


class RegistryError(Exception):
    """The registry file is unreadable or not what this version writes."""


def parse(text: str | bytes) -> dict[str, Entry]:
    """The valid entries of a registry file's text (pure); see parse_entries."""
    return parse_entries(text)[0]


def parse_entries(text: str | bytes) -> tuple[dict[str, Entry], dict[str, tuple[object, str]]]:
    """(valid entries, bad ones: id -> (their JSON, why)) of a registry file's text (pure). Raises
    RegistryError only when the file as a whole is unusable (not JSON, another schema)."""
    import json  # only when there is a file to read: not every remount pays for it

    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RegistryError(f"not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("containers"), dict):
        raise RegistryError("no 'containers' object")
    if doc.get("schema") != SCHEMA:
        raise RegistryError(f"schema {doc.get('schema')!r}, this version reads {SCHEMA}")
    out: dict[str, Entry] = {}
    bad: dict[str, tuple[object, str]] = {}
    for cid, obj in doc["containers"].items():
        try:
            if not cid or not isinstance(obj, dict):
                raise TypeError("not an object with an id")
            entry = Entry.from_dict(cid, obj)
            if entry.pid <= 0 or entry.start_time < 0 or entry.mntns <= 0:
                raise ValueError("pid, start_time and mntns must be positive")
            out[cid] = entry
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            bad[cid] = (obj, f"{type(e).__name__}: {e}")
    return out, bad


def dump(entries: dict[str, Entry]) -> str:
    """The file text for `entries` (pure), keys sorted so equal registries give equal files."""
    import json

    doc = {"schema": SCHEMA, "containers": {cid: e.to_dict() for cid, e in sorted(entries.items())}}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


class Registry:
    """The registry in `state_dir`. `load()` fills `entries` (and `problem`, if the file was set aside);
    `add`/`remove` do an atomic read-modify-write under the lock."""

    def __init__(self, state_dir: str, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILENAME)
        self.lock_path = os.path.join(state_dir, LOCKNAME)
        self.lock_timeout = lock_timeout
        self.entries: dict[str, Entry] = {}
        self.problem: str | None = None  # set when a corrupt file or bad entries were found (and set aside)
        self._held = False  # we hold the lock now (inside locked())

    # -- reading ----------------------------------------------------------------------------------------

    def load(self) -> dict[str, Entry]:
        """Read the file (absent = empty). Bad entries are left out and a corrupt file counts as empty;
        `problem` says what and where. Either is set aside only under the lock: without it, the lock is
        taken (with its deadline) and the file read again; if the lock is not free, nothing is moved."""
        text = self._read()
        if text is None:
            self.entries = {}
            return self.entries
        try:
            good, bad = parse_entries(text)
        except RegistryError as e:
            if not self._held and self._relock():
                return self.entries
            where = self._set_aside("corrupt", text) if self._held else "left in place (the lock is busy)"
            self.problem = f"registry {self.path} is corrupt: {e}; {where}; continuing with discovery only"
            self.entries = {}
            return self.entries
        self.entries = good
        if bad:
            if not self._held and self._relock():
                return self.entries
            what = "; ".join(f"container {cid!r}: bad entry ({why})" for cid, (_, why) in sorted(bad.items()))
            if self._held:
                import json

                where = self._set_aside("rejected", json.dumps({"containers": {c: o for c, (o, _) in bad.items()}}))
                self.save()
            else:
                where = "left in place (the lock is busy)"
            self.problem = f"registry {self.path}: {what}; {where}; the other {len(good)} entries are kept"
        return self.entries

    def _read(self) -> bytes | None:
        try:
            fd = open_private(self.path, os.O_RDONLY, create=False)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(MAX_BYTES)

    def _relock(self) -> bool:
        """Load again under the lock (to set something aside); False if the lock is not free in time."""
        try:
            with self.locked():
                self.load()
            return True
        except LockTimeout:
            return False

    def _set_aside(self, kind: str, text: str | bytes) -> str:
        aside = f"{self.path}.{kind}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:
            if kind == "corrupt":
                os.rename(self.path, aside)
            else:
                write_atomic(aside, text if isinstance(text, bytes) else text.encode())
        except OSError as e:
            return f"could not be set aside ({e.strerror})"
        return f"moved to {aside}"

    # -- writing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry lock (flock on registry.lock) for a read-modify-write; LockTimeout if another
        process holds it longer than `lock_timeout`."""
        if self._held:
            yield
            return
        private_dir(self.state_dir)
        fd = open_lock(self.lock_path)
        try:
            lock(fd, time.monotonic() + self.lock_timeout)
            self._held = True
            yield
        finally:
            self._held = False
            os.close(fd)

    def save(self) -> None:
        """Write `entries` atomically: a reader sees the old file or the new one, never half of one."""
        with self.locked():  # every write under the lock (a no-op when the caller holds it already)
            private_dir(self.state_dir)
            write_atomic(self.path, dump(self.entries).encode(), durable=True)

    def add(self, entry: Entry) -> None:
        """Record (or replace) `entry`."""
        with self.locked():
            self.load()
            self.entries[entry.id] = entry
            self.save()

    def remove(self, cid: str) -> bool:
        """Forget container `cid`; False if it was not registered."""
        with self.locked():
            self.load()
            if self.entries.pop(cid, None) is None:
                return False
            self.save()
            return True

    def remove_if(self, gone: dict[str, tuple[int, int]]) -> list[str]:
        """Forget each id in `gone` whose entry still has that (pid, start_time): a container re-registered
        meanwhile under the same id is kept. Returns the ids removed."""
        with self.locked():
            self.load()
            removed = [
                cid
                for cid, ident in gone.items()
                if cid in self.entries and (self.entries[cid].pid, self.entries[cid].start_time) == ident
            ]
            for cid in removed:
                del self.entries[cid]
            if removed:
                self.save()
            return removed

    def add_container(self, cid: str, pid: int, binds: Iterable[object]) -> Entry:
        """Register the container whose init is `pid` now: its start time and mount namespace are read here.
        Raises procfs.ProcessGone if the pid does not exist. (The OCI hook's entry point.)"""
        from lxcfs_guard.kernel import procfs

        entry = Entry(cid, pid, procfs.pid_start_time(pid), procfs.ns_inode(pid), binds)
        if entry.mntns == procfs.ns_inode("self"):
            raise OSError(errno.EPERM, f"pid {pid} is in our own mount namespace, not a container's")
        self.add(entry)
        return entry
