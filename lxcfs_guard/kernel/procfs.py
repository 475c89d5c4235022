"""Facts about processes read from /proc: identity (start time, namespace inodes) and mount tables.

Identity matters because pids are reused: a pid names the container we registered only while its
start time and its mount-namespace inode are the ones we recorded.
"""

from __future__ import annotations

import errno
import os


class ProcessGone(Exception):
    """The pid does not exist (any more)."""


def pid_start_time(pid: int, proc: str = "/proc") -> int:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(pid) from e
    return parse_stat_start_time(data)


def parse_stat_start_time(data: bytes) -> int:
    # comm (field 2) may contain spaces and parentheses: split after the *last* ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[19])  # field 22 overall; rest[0] is field 3


def ns_inode(pid: int | str, ns: str = "mnt", proc: str = "/proc") -> int:
    """Inode of a namespace of `pid` ("self" allowed): two processes share it iff the inodes are equal."""
    try:
        return os.stat(f"{proc}/{pid}/ns/{ns}").st_ino
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(pid) from e


class MountInfo:
    """One line of /proc/PID/mountinfo (see proc(5)).

    A plain slotted class, not a dataclass: `remount` imports this module on the recovery path, and the
    dataclasses import alone (~5 ms) is a twentieth of its whole budget for 100 containers."""

    __slots__ = (
        "mount_id",
        "parent_id",
        "major",
        "minor",
        "root",
        "mount_point",
        "mount_options",
        "optional",
        "fstype",
        "source",
        "super_options",
    )

    def __init__(
        self,
        mount_id: int,
        parent_id: int,
        major: int,
        minor: int,
        root: str,
        mount_point: str,
        mount_options: str,
        optional: tuple[str, ...],
        fstype: str,
        source: str,
        super_options: str,
    ) -> None:
        self.mount_id = mount_id
        self.parent_id = parent_id
        self.major = major
        self.minor = minor
        self.root = root
        self.mount_point = mount_point
        self.mount_options = mount_options
        self.optional = optional
        self.fstype = fstype
        self.source = source
        self.super_options = super_options

    def _key(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MountInfo) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "MountInfo(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"

    @property
    def dev(self) -> int:
        return os.makedev(self.major, self.minor)

    @property
    def read_only(self) -> bool:
        return "ro" in self.mount_options.split(",")


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        c = field[i]
        if c == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo_line(line: str) -> MountInfo:
    """One line. Split on the single spaces the kernel writes, never on "any whitespace": the kernel escapes
    only space, tab, newline and backslash, so a mount point may hold \\x1c or U+2028, which str.split()
    would take for separators (a name could then forge fields: another fstype, another source)."""
    fields = line.rstrip("\n").split(" ")
    sep = fields.index("-", 6)
    major, minor = fields[2].split(":")
    return MountInfo(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major=int(major),
        minor=int(minor),
        root=_unescape(fields[3]),
        mount_point=_unescape(fields[4]),
        mount_options=fields[5],
        optional=tuple(fields[6:sep]),
        fstype=fields[sep + 1],
        source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
        super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
    )


def parse_mountinfo(text: str | bytes) -> list[MountInfo]:
    """Every mount of a mountinfo text. Bytes are decoded with surrogateescape: the table holds whatever
    bytes a mounter chose (any user can name a FUSE mount `\\xff` through the setuid fusermount3, a USB
    stick brings its Latin-1 label), and such a line must neither crash a reader nor be lost; its fields
    keep their bytes (os.fsencode gives them back). A line that does not parse (none does, from the
    kernel) is skipped rather than failing the whole table."""
    if isinstance(text, bytes):
        text = text.decode(errors="surrogateescape")
    out = []
    for line in text.split("\n"):  # not splitlines(): it also splits on \x1c, \x85, U+2028...
        if line.strip():
            try:
                out.append(parse_mountinfo_line(line))
            except (ValueError, IndexError):
                continue
    return out


def read_mountinfo(pid: int | str = "self", proc: str = "/proc") -> list[MountInfo]:
    """The mount table of `pid`'s mount namespace: the one reader of /proc/PID/mountinfo (bytes-safe)."""
    try:
        with open(f"{proc}/{pid}/mountinfo", "rb") as f:
            return parse_mountinfo(f.read())
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(pid) from e
    except OSError as e:
        if e.errno == errno.EINVAL:  # the process is exiting: its mount namespace is already gone
            raise ProcessGone(pid) from e
        raise


def mounts_at(path: str, pid: int | str = "self", proc: str = "/proc") -> list[MountInfo]:
    """The mounts on `path` (resolved with realpath) in `pid`'s namespace, in mount-table order. For mounts
    stacked the usual way the last is the one a lookup finds; one slid *beneath* (MOVE_MOUNT_BENEATH) is
    listed after the mount above it, so where that matters follow parent ids (watchdog.status.top_mount_dev)."""
    real = os.path.realpath(path)
    return [m for m in read_mountinfo(pid, proc) if m.mount_point == real]


def list_pids(proc: str = "/proc") -> list[int]:
    return [int(name) for name in os.listdir(proc) if name.isdigit()]
