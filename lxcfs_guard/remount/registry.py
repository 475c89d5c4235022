"""The registry: which containers lxcfs-guard bound files into, and how (`<state-dir>/registry.json`).

Discovery already finds every bind the kernel shows; the registry adds what the kernel cannot tell:
*identity* (a pid is the container we bound only while its start time and mount-namespace inode are the ones
recorded here, so a reused pid is never mistaken for it) and *intent* (the binds that should exist, so one the
container lost or replaced is noticed and, if it is now a symlink or a directory, refused and reported).

File format (JSON, schema 1)::

    {"schema": 1, "containers": {"<id>": {"pid": 123, "start_time": 456789, "mntns": 4026532999,
        "binds": [{"source": "proc/meminfo", "target": "/proc/meminfo", "flags": "ro,nosuid,nodev"}]}}}

Writes are atomic (temp file + fsync + rename + fsync of the directory) and read-modify-write runs under
an flock on `registry.lock`, so the OCI hook, `attach` and `remount` (which prunes gone containers) can run
at once. A file that cannot be parsed is moved aside (`registry.json.corrupt-<time>`) with a clear message
and the caller carries on with discovery alone: a damaged registry must never stop a repair.

Plain classes with __slots__ rather than dataclasses: `remount` imports this on the recovery path, and
importing dataclasses costs ~5 ms of the 100 ms budget.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterable, Iterator

from lxcfs_guard.kernel.files import write_atomic


SCHEMA = 1
FILENAME = "registry.json"
LOCKNAME = "registry.lock"


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
        return {"pid": self.pid, "start_time": self.start_time, "mntns": self.mntns,
                "binds": [b.to_dict() for b in self.binds]}

    @classmethod
    def from_dict(cls, id: str, obj: dict) -> Entry:
        return cls(id, obj["pid"], obj["start_time"], obj["mntns"], obj.get("binds", ()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (self.id, self.to_dict()) == (other.id, other.to_dict())

    def __repr__(self) -> str:
        return f"Entry({self.id!r}, pid={self.pid}, start_time={self.start_time}, mntns={self.mntns}, binds={len(self.binds)})"


class RegistryError(Exception):
    """The registry file is unreadable or not what this version writes."""


def parse(text: str | bytes) -> dict[str, Entry]:
    """Entries of a registry file's text (pure). Raises RegistryError with the reason."""
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
    for cid, obj in doc["containers"].items():
        try:
            out[cid] = Entry.from_dict(cid, obj)
        except (KeyError, TypeError, ValueError) as e:
            raise RegistryError(f"container {cid!r}: bad entry ({type(e).__name__}: {e})") from None
    return out


def dump(entries: dict[str, Entry]) -> str:
    """The file text for `entries` (pure), keys sorted so equal registries give equal files."""
    import json

    doc = {"schema": SCHEMA, "containers": {cid: e.to_dict() for cid, e in sorted(entries.items())}}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


class Registry:
    """The registry in `state_dir`. `load()` fills `entries` (and `problem`, if the file was set aside);
    `add`/`remove` do an atomic read-modify-write under the lock."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILENAME)
        self.lock_path = os.path.join(state_dir, LOCKNAME)
        self.entries: dict[str, Entry] = {}
        self.problem: str | None = None  # set when a corrupt file was moved aside

    # -- reading ----------------------------------------------------------------------------------------

    def load(self) -> dict[str, Entry]:
        """Read the file (absent = empty). A corrupt one is moved aside, `problem` says where and why, and
        an empty registry is returned so discovery still runs."""
        try:
            with open(self.path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            self.entries = {}
            return self.entries
        try:
            self.entries = parse(text)
        except RegistryError as e:
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            try:
                os.rename(self.path, aside)
                where = f"moved to {aside}"
            except OSError as e2:
                where = f"could not be moved aside ({e2.strerror})"
            self.problem = f"registry {self.path} is corrupt: {e}; {where}; continuing with discovery only"
            self.entries = {}
        return self.entries

    # -- writing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry lock (flock on registry.lock) for a read-modify-write."""
        os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self) -> None:
        """Write `entries` atomically: a reader sees the old file or the new one, never half of one."""
        os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
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
            removed = [cid for cid, ident in gone.items()
                       if cid in self.entries and (self.entries[cid].pid, self.entries[cid].start_time) == ident]
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
