"""The one interface both cgroup readers implement, plus the pure parsers they share.

A reader is built with the cgroup root as a parameter (default /sys/fs/cgroup) so unit tests point it at a
fixture tree. Every method takes a CgroupRef (from `ref_for_pid` or `parse_proc_cgroup`) and returns facts,
or None for a controller that is not there. A cgroup that vanished raises `CgroupGone`; callers serve the
host file then.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Protocol

from lxcfs_guard.cgroup.facts import CgroupRef, CpuFacts, CpuUsage, IoStat, MemoryFacts

DEFAULT_ROOT = "/sys/fs/cgroup"
_CHUNK = 65536


class CgroupGone(Exception):
    """The cgroup (or the process it was read for) went away mid-read."""


class CgroupReader(Protocol):
    version: int
    root: str

    def ref_for_pid(self, pid: int | str, proc: str = "/proc") -> CgroupRef: ...
    def parse_proc_cgroup(self, text: str) -> CgroupRef: ...
    def memory(self, ref: CgroupRef, swap: bool = True) -> MemoryFacts | None: ...
    def cpu(self, ref: CgroupRef, quota: bool = True) -> CpuFacts | None: ...
    def cpu_usage(self, ref: CgroupRef) -> CpuUsage | None: ...
    def cpu_time(self, ref: CgroupRef) -> int | None: ...
    def io(self, ref: CgroupRef) -> dict[tuple[int, int], IoStat] | None: ...
    def procs(self, ref: CgroupRef) -> list[int] | None: ...


def read_text(path: str, errors: str = "replace", *, one_record: bool = True) -> str | None:
    """A whole cgroup/proc file, or None if it does not exist (a missing controller file).

    `errors="surrogateescape"` keeps bytes that are not UTF-8 (a cgroup named with one in /proc/PID/cgroup):
    such a str turns back into the same bytes wherever it is used as a path (os.fsencode).

    `one_record`: the file is one seq_file record (every cgroup file, /proc/PID/cgroup, /proc/meminfo,
    /proc/stat: one show() call), which the kernel hands over whole in one read when the buffer is big
    enough, so a short first read is the whole file and no second read is spent to see EOF. Files of many
    records (/proc/cpuinfo: one per CPU, /proc/diskstats: one per disk) can come back short at a record
    that did not fit the kernel's buffer, long before their end: pass False to read to EOF (a 4-CPU VM's
    cpuinfo came back with 3 CPUs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = os.read(fd, _CHUNK)
        if data and (len(data) == _CHUNK or not one_record):
            chunks = [data]
            while True:
                b = os.read(fd, _CHUNK)
                if not b:
                    break
                chunks.append(b)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors)


def read_int(path: str) -> int | None:
    return parse_int_text(read_text(path))


def parse_int_text(text: str | None) -> int | None:
    """One number of a cgroup file ("max": -1), or None if the file is missing, empty or not a number."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return None


# One `key value` line: exactly two whitespace-separated fields, the second an integer.
_FLAT_LINE = re.compile(r"^[ \t\v\f\r]*(\S+)[ \t\v\f\r]+([-+]?\d+)[ \t\v\f\r]*$", re.MULTILINE | re.ASCII)


def parse_flat_keyed(text: str, keys: Iterable[str] | None = None) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, cpuacct.stat) -> dict; lines that are not two fields skipped.
    With `keys`, only those (if present) are returned.

    Every render reads a memory.stat of 40-70 lines. The kernel writes each as "key value\n": when the
    text has exactly that shape in its counts (one space and two fields per line), one str.split() takes it
    apart (2 us against 14-21 us for the regular expression, which then only reads odd text)."""
    fields = text.split()
    lines = text.count("\n")
    if len(fields) == 2 * lines and text.count(" ") == lines and text.endswith("\n"):
        try:
            return _ints(dict(zip(fields[::2], fields[1::2], strict=True)), keys)
        except ValueError:
            pass  # a value that is not a number: its line is skipped, as by the expression
    return _ints(dict(_FLAT_LINE.findall(text)), keys)


def _ints(found: dict[str, str], keys: Iterable[str] | None) -> dict[str, int]:
    if keys is None:
        return {k: int(v) for k, v in found.items()}
    return {k: int(found[k]) for k in keys if k in found}


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Kernel cpu list syntax "0-3,5,7-8" -> (0,1,2,3,5,7,8). Empty or malformed parts are ignored."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                cpus.update(range(int(lo), int(hi) + 1))
            else:
                cpus.add(int(part))
        except ValueError:
            continue
    return tuple(sorted(cpus))


def format_cpu_list(cpus: tuple[int, ...] | list[int]) -> str:
    """(0,1,2,5) -> "0-2,5", the way the kernel prints cpu/online."""
    out: list[str] = []
    cpus = sorted(set(cpus))
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def strip_init_scope(path: str) -> str:
    """LXCFS shows a systemd container's view from its init's cgroup minus a trailing /init.scope."""
    if path.endswith("/init.scope"):
        path = path[: -len("/init.scope")] or "/"
    return path


def ancestors(path: str) -> list[str]:
    """ "/a/b/c" -> ["/a/b/c", "/a/b", "/a", "/"]: where a limit may be set, nearest first."""
    path = "/" + path.strip("/")
    out = [path]
    while path != "/":
        path = path.rsplit("/", 1)[0] or "/"
        out.append(path)
    return out


def join(base: str, rel: str) -> str:
    rel = rel.strip("/")
    return f"{base}/{rel}" if rel else base
