"""The pyfuse3 Operations: a read-only tree whose file contents depend on who asks.

Per open+read+close the kernel sends OPEN, READ (until a short read or EOF) and RELEASE; FLUSH is answered
ENOSYS once and then never sent again. So the work is done once, in open(): resolve the caller, render (or
take the cached render), keep the bytes under a fresh fh; read() only slices and release() only drops it.
Handlers never await: each runs to completion in the worker's blocking loop (fs/syncloop), so a worker has
one request in flight.

With several workers on one connection (fs/connection.py) the READs and the RELEASE of a file handle can
reach any worker, so the snapshot is kept in the shared arena (fs/arena.py), which every worker reads.
A request the kernel resends after a worker died may be answered twice; the second reply of an OPEN then
fails (the kernel no longer knows the first request id) and no RELEASE will ever come for that fh:
`reply_failed` frees its snapshot (fs/fastpath.py calls it), as libfuse's high-level API does for an
interrupted open.
"""

from __future__ import annotations

import errno
import logging
import os
import time

import pyfuse3

from lxcfs_guard.fs.arena import LocalSnapshots
from lxcfs_guard.fs.caller import Resolver
from lxcfs_guard.fs.content import Content
from lxcfs_guard.fs.pressure import Pressure
from lxcfs_guard.fs.statfs import statfs_numbers
from lxcfs_guard.fs.sysfs_cpu import CPU_DIR, CpuDir
from lxcfs_guard.fs.sysfs_cpu_ops import CpuDirOps
from lxcfs_guard.fs.tree import ROOT_INODE, Tree

log = logging.getLogger(__name__)

ENTRY_TIMEOUT = 300.0  # the tree never changes while we run: names are cached long
# Regular files report a size that bounds any caller's content (see Content.size_bound): read(2) on a
# direct_io file ignores i_size, but sendfile(2)/splice (busybox `cat`) go through the page cache and stop
# at i_size, so a size of 0 reads as an empty file. The kernel trims i_size to the real end at the first
# short read, so a generous bound costs nothing.
FILE_ATTR_TIMEOUT = 1.0  # like LXCFS: stdio's fstat after open is served by the kernel, yet a stat() of a
# file on a dead connection turns into ENOTCONN within a second
LISTING_FH = 1 << 63  # fhs of directory listings (the cpu directory's) apart from files' and fixed dirs'
# (the arena's fhs use bits 0-62, fixed directories' fh is their inode)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: Tree,
        resolver: Resolver,
        content: Content,
        cpudir: CpuDir | None = None,
        pressure: Pressure | None = None,
        snapshots=None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.resolver = resolver
        self.content = content
        self.snapshots = snapshots if snapshots is not None else LocalSnapshots()
        # proc/pressure/*: write registers a PSI trigger, poll waits for it (fs/pressure.py)
        self.pressure = pressure if pressure is not None else Pressure(content.reader, enabled=False)
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}
        started_ns = time.time_ns()
        for inode, node in tree.nodes.items():
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            a.st_mode = node.mode | (0o200 if self.pressure.writable(node.name) else 0)
            a.st_nlink = 2 if node.is_dir else 1
            a.st_uid = 0
            a.st_gid = 0
            a.st_size = 0 if node.is_dir else content.size_bound(node.name)
            a.st_blksize = 4096
            a.st_blocks = 0
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = started_ns
            a.entry_timeout = ENTRY_TIMEOUT
            # Directories' attributes are never cached: stat() of the mountpoint must reach us, so a dead
            # connection shows as ENOTCONN (how the next daemon and the watchdog recognise it). Path walks
            # do not ask for them (no default_permissions), so reads pay nothing for it.
            a.attr_timeout = 0 if node.is_dir else FILE_ATTR_TIMEOUT
            self._attrs[inode] = a
        self._statfs = statfs_numbers([a.st_size for a in self._attrs.values()], len(self._attrs))
        # sys/devices/system/cpu beyond `online`: the host's directory (sysfs_cpu); thin dispatch below
        top = tree.by_path[CPU_DIR]
        fixed = {name: self._attrs[i] for name, i in tree.nodes[top].children.items()}
        cpudir = cpudir or CpuDir(content.visible_cpus, content.online_bytes, renumber=content.cpu_view == "quota")
        self.cpu = CpuDirOps(cpudir, resolver, top, fixed)

    # -- names and attributes -------------------------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        if name == b"..":
            node = self.tree.get(parent_inode)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            parent = self.tree.by_path.get(node.name.rpartition("/")[0], ROOT_INODE)
            return self._attrs[parent]
        node = self.tree.lookup(parent_inode, name)
        if node is None:
            if self.cpu.handles(parent_inode):
                return self.cpu.lookup(parent_inode, name, ctx)
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs[node.inode]

    async def getattr(self, inode, ctx=None):
        if self.cpu.dir.owns(inode):
            return self.cpu.getattr(inode)
        try:
            return self._attrs[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def forget(self, inode_list):
        return None

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        for field, value in self._statfs.items():
            setattr(s, field, value)
        return s

    async def access(self, inode, mode, ctx):
        if self.cpu.dir.owns(inode):
            return self.cpu.access(inode, mode, ctx)
        if inode not in self._attrs:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if mode & os.W_OK and not self.pressure.writable(self.tree.nodes[inode].name):
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    # -- directories ----------------------------------------------------------------------------------
    async def opendir(self, inode, ctx):
        if self.cpu.handles(inode):
            return self._keep(self.cpu.opendir(inode, ctx), LISTING_FH)
        node = self.tree.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        if fh & LISTING_FH:
            return self.cpu.readdir(self.snapshots.get(fh & ~LISTING_FH) or b"", start_id, token)
        node = self.tree.get(fh)
        if node is None:
            return
        entries = sorted(node.children.items())
        for i, (name, inode) in enumerate(entries[start_id:], start=start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attrs[inode], i):
                break

    async def releasedir(self, fh):
        if fh & LISTING_FH:
            self.snapshots.free(fh & ~LISTING_FH)

    async def readlink(self, inode, ctx):
        if self.cpu.dir.owns(inode):
            return self.cpu.readlink(inode)
        raise pyfuse3.FUSEError(errno.EINVAL)

    # -- files ----------------------------------------------------------------------------------------
    async def open(self, inode, flags, ctx):
        return self.open_now(inode, flags, ctx)

    def open_now(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        """open, called directly by the worker's request loop (fs/fastpath.py): every read costs one, and a
        coroutine driven to its end around each of a read's four requests cost a few microseconds each."""
        node = None
        if self.cpu.dir.owns(inode):
            data = self.cpu.open(inode, flags, ctx)
        else:
            node = self.tree.get(inode)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if flags & _WRITE_FLAGS and not self.pressure.writable(node.name):
                raise pyfuse3.FUSEError(errno.EROFS)
            view = self.resolver.resolve(ctx.pid)
            data = self.content.render(node.name, view)
        fh = self._keep(data)
        if node is not None:
            self.pressure.opened(fh, node.name, view.ref if view is not None else None, ctx.pid)
        return self._file_info(fh)

    def _keep(self, data: bytes, flag: int = 0) -> int:
        """Per-open bytes (a file's content, a directory listing) under a fresh fh, in the snapshot store any
        worker reads (fs/arena.py): the one place they are kept."""
        try:
            return flag | self.snapshots.put(data)
        except OSError as e:  # the arena is full of open files (ENFILE)
            log.warning("open: %s", e)
            raise pyfuse3.FUSEError(e.errno or errno.ENFILE) from None

    @staticmethod
    def _file_info(fh: int) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=False)

    async def read(self, fh, off, size):
        return self.read_now(fh, off, size)

    def read_now(self, fh: int, off: int, size: int) -> bytes:
        if off == 0 and self.pressure.holds(fh):  # re-read from 0 on a kept fd: the figures of now
            old = self.snapshots.get(fh)
            if old is not None:
                return self.pressure.fresh(fh, old)[:size]
        data = self.snapshots.read(fh, off, size)
        if data is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return data

    async def release(self, fh):
        self.release_now(fh)

    def release_now(self, fh: int) -> None:
        self.snapshots.free(fh)
        self.pressure.release(fh)

    async def poll(self, inode, fh, poll_handle, ctx):
        # never ENOSYS: the kernel would stop sending POLL for the whole connection (LXCFS #726)
        return self.pressure.poll(fh, poll_handle)

    def reply_failed(self, fh: int) -> None:
        """The kernel refused the reply of an OPEN or OPENDIR that answered `fh` (a duplicate of a resent
        request): nobody will ever release it, so drop its snapshot (a file's or a listing's) now."""
        self.snapshots.free(fh & ~LISTING_FH)

    # -- everything that would change something --------------------------------------------------------
    async def write(self, fh, off, buf):
        return self.pressure.write(fh, buf)  # EROFS for everything but a pressure file

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.tree.get(inode)
        if (
            node is not None
            and self.pressure.writable(node.name)
            and fields.update_size
            and attr.st_size == 0
            and not (fields.update_mode or fields.update_uid or fields.update_gid)
        ):
            return self._attrs[inode]  # O_TRUNC of `echo ... > /proc/pressure/memory`: nothing to truncate
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, parent_inode, name, mode, flags, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, parent_inode, name, mode, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, inode, name, value, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)
