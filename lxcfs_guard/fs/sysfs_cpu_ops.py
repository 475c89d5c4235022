"""The FUSE side of the cpu directory: turns CpuDir's answers into pyfuse3 attributes and errors, and
resolves the caller only when the directory's view depends on it. Operations calls it for the fixed cpu
directory's inode and for every inode above INODE_BASE; per-open bytes (file contents, directory
listings) go back to Operations, which keeps them under the fh like every other open.
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from lxcfs_guard.fs.caller import Resolver, View
from lxcfs_guard.fs.sysfs_cpu import ATTR_TIMEOUT, CpuDir, Entry

_TOP, _SUB = b"T", b"S"  # first byte of a listing: the top directory, or one below it
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


def _fail(e: OSError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(e.errno or errno.EIO)


class CpuDirOps:
    def __init__(
        self, cpudir: CpuDir, resolver: Resolver, top_inode: int, fixed: dict[bytes, pyfuse3.EntryAttributes]
    ) -> None:
        self.dir = cpudir
        self.resolver = resolver
        self.top = top_inode  # the fixed tree's sys/devices/system/cpu
        self.fixed = fixed  # its fixed children (online) and their attributes

    def handles(self, inode: int) -> bool:
        return self.dir.owns(inode) or (inode == self.top and self.dir.enabled)

    def _view(self, ctx) -> View | None:
        return self.resolver.resolve(ctx.pid) if self.dir.per_caller() else None

    @staticmethod
    def attrs(e: Entry) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = e.inode
        a.st_mode = e.st.st_mode
        a.st_nlink = 2 if stat.S_ISDIR(e.st.st_mode) else 1
        a.st_uid = a.st_gid = 0
        a.st_size = e.st.st_size
        a.st_blksize = 4096
        a.st_blocks = 0
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = e.st.st_atime_ns, e.st.st_mtime_ns, e.st.st_ctime_ns
        a.entry_timeout = e.entry_timeout
        a.attr_timeout = ATTR_TIMEOUT
        return a

    def lookup(self, parent: int, name: bytes, ctx) -> pyfuse3.EntryAttributes:
        e = self.dir.lookup(None if parent == self.top else parent, os.fsdecode(name), self._view(ctx))
        if e is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(e)

    def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        e = self.dir.getattr(inode)
        if e is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(e)

    def opendir(self, inode: int, ctx) -> bytes:
        """The listing this caller gets, to be kept under the directory's fh."""
        top = inode == self.top
        data = self.dir.listing(None if top else inode, self._view(ctx))
        if data is None:
            e = self.dir.getattr(inode)
            raise pyfuse3.FUSEError(errno.ENOTDIR if e is not None else errno.ENOENT)
        return (_TOP if top else _SUB) + data

    def readdir(self, listing: bytes, start_id: int, token) -> None:
        top = listing[:1] == _TOP
        rows: list[tuple[bytes, pyfuse3.EntryAttributes]] = []
        if top:
            rows.extend(self.fixed.items())
        rows.extend((os.fsencode(n), self.attrs(e)) for n, e in self.dir.entries(listing[1:], top))
        rows.sort(key=lambda r: r[0])
        for i, (name, a) in enumerate(rows[start_id:], start=start_id + 1):
            if not pyfuse3.readdir_reply(token, name, a, i):
                break

    def open(self, inode: int, flags: int, ctx) -> bytes:
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            return self.dir.render(inode, self._view(ctx), ctx.uid, ctx.gid)
        except OSError as e:
            raise _fail(e) from None

    def readlink(self, inode: int) -> bytes:
        try:
            return self.dir.readlink(inode)
        except OSError as e:
            raise _fail(e) from None

    def access(self, inode: int, mode: int, ctx) -> bool:
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        if inode == self.top:
            return True
        if self.dir.getattr(inode) is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if mode & os.R_OK and not self.dir.readable(inode, ctx.uid, ctx.gid):
            raise pyfuse3.FUSEError(errno.EACCES)
        return True
