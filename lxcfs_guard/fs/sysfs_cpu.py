"""The whole `sys/devices/system/cpu` directory, as LXCFS 5.x-7.0 serve it, so LXC's mount hook (which binds
the directory whole when it holds `uevent`) gets every entry a container's tools read: `online` stays the
fixed tree's virtual file, everything else is the host's /sys/devices/system/cpu passed through.

With `--cpu-dir-view container` we go past LXCFS, whose `present`, `possible` and `cpuN` directories are the
host's while `online` is the container's (lxc/lxcfs#731: `nproc --all`/_NPROCESSORS_CONF disagree with
_NPROCESSORS_ONLN): `present` and `possible` say what `online` says, `offline` is empty, and only the cpuN
directories of the caller's CPUs are listed (renamed cpu0..cpuN-1 with the quota view, which renumbers).
It is not the default: glibc reads _NPROCESSORS_CONF from `possible`, and correct programs size per-CPU arrays
by it and index them with sched_getcpu(), which returns the host's CPU number; with a cpuset such as 2-3 a
container-sized `possible` would make them write past their arrays. `host` (LXCFS's behaviour) never does.

Names that exist for one caller and not another (cpuN in container mode) get entry_timeout 0: the kernel's
dentries are shared by every bind of the mount, so a cached positive entry from one container must not
answer another's path walk. A refused name is answered ENOENT, which the kernel never caches. Directory
listings depend on the caller too, and readdir() carries no caller, so opendir() renders the listing as
bytes kept under the fh, the same way open() keeps a file's content.

Every host path is opened with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) below an fd of the host
directory: nothing we read can lead outside it. Symlinks (cpu0/subsystem -> ../../../../bus/cpu) are shown
as symlinks with the host's target text, resolved by the reader's kernel in the reader's own mount
namespace (in a container: its own /sys); one whose target would climb above our mount is hidden.
Inode numbers are the host's (kernfs) inode numbers above INODE_BASE: the same in every serving process,
and a path is found again by inode with a bounded walk when a process did not see the lookup.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxcfs_guard.kernel import syscalls

if TYPE_CHECKING:
    from lxcfs_guard.fs.caller import View

CPU_DIR = "sys/devices/system/cpu"  # where the directory sits in our tree
HOST_CPU_DIR = "/sys/devices/system/cpu"
CPU_DIR_VIEWS = ("host", "container")
INODE_BASE = 1 << 56  # above every fixed-tree inode; host inode numbers are added to it
MAX_WALK = 500_000  # entries a lookup by inode may visit (a 2-CPU host has ~270; ~130 more per CPU)
READ_MAX = 1 << 20
ENTRY_TIMEOUT = 300.0
ATTR_TIMEOUT = 1.0
MASK_FILES = ("present", "possible")  # say what `online` says in container mode
_CPU_NAME = re.compile(r"cpu(0|[1-9][0-9]{0,5})")
_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS


# -- pure parts ---------------------------------------------------------------------------------------
def cpu_number(name: str) -> int | None:
    """N for a `cpuN` directory name, else None (cpufreq, cpuidle, cpu01 are not CPUs)."""
    m = _CPU_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def cpu_name_map(host_names: Iterable[str], visible: Iterable[int], renumber: bool) -> dict[str, str]:
    """The caller's cpuN names -> the host's: the visible CPUs that have a directory, renamed cpu0..cpuN-1
    when the view renumbers (the quota view's `online` is 0..N-1)."""
    have = {n for n in (cpu_number(h) for h in host_names) if n is not None}
    shown = [c for c in visible if c in have]
    if renumber:
        return {f"cpu{i}": f"cpu{c}" for i, c in enumerate(shown)}
    return {f"cpu{c}": f"cpu{c}" for c in shown}


def link_stays_inside(location: str, target: str) -> bool:
    """Whether symlink `target`, found at `location` (a path relative to our mount root), resolves to
    somewhere inside the mount. Read on the host, one that climbs higher would land in the host's own tree
    around the mountpoint."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(location), target))
    return joined != ".." and not joined.startswith("../") and not joined.startswith("/")


def may_read(st_mode: int, uid: int, gid: int) -> bool:
    """The kernel's read permission check for a root-owned file (every entry of the host's sysfs here):
    root (host uid 0) may read, others by the group or other bits. An unprivileged container's root is a
    high host uid: it gets the other bits, as on its own sysfs mount."""
    if uid == 0:
        return True
    if gid == 0:
        return bool(st_mode & stat.S_IRGRP)
    return bool(st_mode & stat.S_IROTH)


def encode_listing(entries: Iterable[tuple[str, str]]) -> bytes:
    """(name shown, host path) pairs as bytes, the per-open content of a directory."""
    return b"\0".join(os.fsencode(n) + b"\0" + os.fsencode(h) for n, h in entries)


def decode_listing(data: bytes) -> list[tuple[str, str]]:
    if not data:
        return []
    parts = [os.fsdecode(p) for p in data.split(b"\0")]
    return list(zip(parts[0::2], parts[1::2], strict=False))


@dataclass(frozen=True, slots=True)
class Entry:
    """One host entry as we present it."""

    inode: int
    path: str  # relative to the host cpu directory
    st: os.stat_result
    entry_timeout: float


# -- the host directory ---------------------------------------------------------------------------------
class CpuDir:
    """Lookups, attributes, listings and contents of everything in the cpu directory but `online`.

    `visible(view)` gives the host CPU numbers a caller sees and `online(view)` the bytes of its `online`
    (both from Content, so the three files can never disagree); `renumber` is whether the CPU view
    renumbers (quota). `fixed` are the names the fixed tree serves in the directory itself.
    """

    def __init__(
        self,
        visible: Callable[[View], tuple[int, ...]],
        online: Callable[[View], bytes],
        mode: str = "host",
        renumber: bool = False,
        host_dir: str = HOST_CPU_DIR,
        fixed: Iterable[str] = ("online",),
    ) -> None:
        if mode not in CPU_DIR_VIEWS:
            raise ValueError(f"cpu directory view must be one of {CPU_DIR_VIEWS}, not {mode!r}")
        self.visible = visible
        self.online = online
        self.container = mode == "container"
        self.renumber = renumber
        self.fixed = frozenset(fixed)
        self._paths: dict[int, str] = {}
        try:
            self._dirfd: int | None = os.open(host_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._dirfd = None  # no sysfs here: the directory holds only the fixed files

    @property
    def enabled(self) -> bool:
        return self._dirfd is not None

    @staticmethod
    def owns(inode: int) -> bool:
        return inode >= INODE_BASE

    def per_caller(self) -> bool:
        """Whether the view of the directory depends on who asks (only then is the caller resolved)."""
        return self.container

    # -- host access, never leaving the directory -----------------------------------------------------
    def _open(self, path: str, flags: int) -> int:
        if self._dirfd is None:
            raise OSError(errno.ENOENT, "no host cpu directory")
        return syscalls.openat2(self._dirfd, path or ".", flags | os.O_CLOEXEC, _RESOLVE)

    def _lstat(self, path: str) -> os.stat_result:
        fd = self._open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _entry(self, path: str, st: os.stat_result, top_cpu: bool = False) -> Entry:
        inode = INODE_BASE + (st.st_ino % INODE_BASE)
        self._paths[inode] = path
        timeout = 0.0 if (top_cpu and self.container) else ENTRY_TIMEOUT
        return Entry(inode, path, st, timeout)

    def _readlink(self, path: str) -> str:
        fd = self._open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            return os.readlink("", dir_fd=fd)
        finally:
            os.close(fd)

    def _shown_link(self, path: str) -> bool:
        try:
            return link_stays_inside(f"{CPU_DIR}/{path}", self._readlink(path))
        except OSError:
            return False

    def _host_names(self, path: str) -> list[str]:
        fd = self._open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    # -- the caller's names in the top directory -------------------------------------------------------
    def _cpu_map(self, view: View | None) -> dict[str, str] | None:
        """None in host mode (every name as the host has it) or when the caller is unknown."""
        if not self.container or view is None:
            return None
        return cpu_name_map(self._host_names(""), self.visible(view), self.renumber)

    def _host_name(self, name: str, cpu_map: dict[str, str] | None) -> str | None:
        """The host name behind `name` in the top directory for this caller, None if it is not shown."""
        if name in self.fixed:
            return None
        if cpu_map is not None and cpu_number(name) is not None:
            return cpu_map.get(name)
        return name

    # -- operations ------------------------------------------------------------------------------------
    def lookup(self, parent: int | None, name: str, view: View | None = None) -> Entry | None:
        """`parent` None is the top directory (the fixed tree's node)."""
        if not self.enabled or name in ("", ".", "..") or "/" in name:
            return None
        try:
            if parent is None:
                host = self._host_name(name, self._cpu_map(view))
                if host is None:
                    return None
                path = host
            else:
                base = self.path_of(parent)
                if base is None:
                    return None
                path = f"{base}/{name}"
            st = self._lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) and not self._shown_link(path):
            return None
        return self._entry(path, st, top_cpu=parent is None and cpu_number(name) is not None)

    def getattr(self, inode: int) -> Entry | None:
        path = self.path_of(inode)
        if path is None:
            return None
        try:
            st = self._lstat(path)
        except OSError:
            return None
        if INODE_BASE + (st.st_ino % INODE_BASE) != inode:
            return None  # the path now names another object (a CPU unplugged and plugged again)
        return self._entry(path, st, top_cpu="/" not in path and cpu_number(path) is not None)

    def path_of(self, inode: int) -> str | None:
        path = self._paths.get(inode)
        if path is None and self.enabled and self.owns(inode):
            path = self._walk_for(inode)
        return path

    def _walk_for(self, inode: int) -> str | None:
        """A serving process that did not answer the lookup of `inode` finds its path by walking the host
        directory (symlinks not followed), remembering everything it sees on the way."""
        todo, seen = [""], 0
        while todo and seen < MAX_WALK:
            base = todo.pop()
            try:
                fd = self._open(base, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                with os.scandir(fd) as it:
                    for d in it:
                        seen += 1
                        path = f"{base}/{d.name}" if base else d.name
                        ino = INODE_BASE + (d.inode() % INODE_BASE)
                        self._paths[ino] = path
                        if ino == inode:
                            return path
                        if d.is_dir(follow_symlinks=False):
                            todo.append(path)
            finally:
                os.close(fd)
        return None

    def listing(self, parent: int | None, view: View | None = None) -> bytes | None:
        """The directory's entries for this caller (names shown, host paths), as per-open bytes."""
        if not self.enabled:
            return b"" if parent is None else None
        try:
            if parent is None:
                cpu_map = self._cpu_map(view)
                pairs = []
                for name in self._host_names(""):
                    if name in self.fixed:
                        continue
                    if cpu_map is not None and cpu_number(name) is not None:
                        continue
                    pairs.append((name, name))
                if cpu_map is not None:
                    pairs.extend(cpu_map.items())
            else:
                base = self.path_of(parent)
                if base is None:
                    return None
                pairs = [(n, f"{base}/{n}") for n in self._host_names(base)]
        except OSError:
            return None
        return encode_listing(sorted(pairs))

    def entries(self, listing: bytes, top: bool) -> list[tuple[str, Entry]]:
        """The listing's entries with their attributes; vanished entries and hidden links are left out."""
        out = []
        for name, path in decode_listing(listing):
            try:
                st = self._lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) and not self._shown_link(path):
                continue
            out.append((name, self._entry(path, st, top_cpu=top and cpu_number(name) is not None)))
        return out

    def readlink(self, inode: int) -> bytes:
        path = self.path_of(inode)
        if path is None:
            raise OSError(errno.ENOENT, "gone")
        target = self._readlink(path)
        if not link_stays_inside(f"{CPU_DIR}/{path}", target):
            raise OSError(errno.ENOENT, "hidden link")
        return os.fsencode(target)

    def render(self, inode: int, view: View | None, uid: int, gid: int) -> bytes:
        """A file's bytes for this caller: the container view's `present`/`possible`/`offline`, else the
        host file's. OSError carries the errno to answer (EACCES, EISDIR, EIO from sysfs)."""
        path = self.path_of(inode)
        if path is None:
            raise OSError(errno.ENOENT, "gone")
        st = self._lstat(path)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.ENOENT, path)
        if not may_read(st.st_mode, uid, gid):
            raise OSError(errno.EACCES, path)
        if self.container and view is not None:
            if path in MASK_FILES:
                return self.online(view)
            if path == "offline":
                return b"\n"
        fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        try:
            chunks, size = [], 0
            while size < READ_MAX:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def readable(self, inode: int, uid: int, gid: int) -> bool:
        path = self.path_of(inode)
        if path is None:
            return False
        try:
            st = self._lstat(path)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) or may_read(st.st_mode, uid, gid)
