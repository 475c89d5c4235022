"""A prototype, for measurement only: our real caller resolution and views served by a plain synchronous loop
that speaks the FUSE protocol on /dev/fuse itself (struct + os.read/os.write), instead of pyfuse3 + trio.

Why: profiling `serve` under bench/fleet.py shows most of its CPU per read is the pyfuse3/trio request loop
(a trio lock, an epoll re-arm and a task switch per request), not our resolution and rendering; with those
removed (a do-nothing open) it cost as much as with them. This prototype answers "what would a leaner loop
give?" with the same views: run it in place of `serve` through bench/fleet.py's base tree, e.g.

    mkdir -p /tmp/raw/lxcfs_guard && cp -r lxcfs_guard/* /tmp/raw/lxcfs_guard/ \
      && cp bench/rawfuse_proto.py /tmp/raw/lxcfs_guard/rawproto.py   (see --help of fleet.py: --base-tree)

It is not the product: no SIGHUP handover, no READY=1, no workers; read-only tree of config.ALL_FILES.

    .venv/bin/python bench/rawfuse_proto.py serve --mountpoint DIR [--state-dir DIR] [--cache-ttl 0.1]
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import signal
import stat
import struct
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from lxcfs_guard.cgroup import open_reader  # noqa: E402
from lxcfs_guard.fs.caller import Resolver  # noqa: E402
from lxcfs_guard.fs.content import Content  # noqa: E402
from lxcfs_guard.fs.loadavg import LoadSampler  # noqa: E402
from lxcfs_guard.fs.tree import Tree  # noqa: E402

IN_HDR = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HDR = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr, 88 bytes
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid entry_nsec attr_nsec
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
READ_IN = struct.Struct("<QQI")  # fh offset size
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")  # 64 bytes
KSTATFS = struct.Struct("<QQQQQIII28x")  # blocks bfree bavail files ffree bsize namelen frsize (+pad, spare)
DIRENT = struct.Struct("<QQII")

LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE, FLUSH = 1, 2, 3, 14, 15, 17, 18, 25
INIT, OPENDIR, READDIR, RELEASEDIR, ACCESS, INTERRUPT, DESTROY, BATCH_FORGET = 26, 27, 28, 29, 34, 36, 38, 42
FOPEN_DIRECT_IO = 1
FUSE_ASYNC_READ, FUSE_BIG_WRITES, FUSE_MAX_PAGES = 1 << 0, 1 << 5, 1 << 22
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}


def mount(mountpoint: str, fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    flags = 1 | 2 | 4  # MS_RDONLY | MS_NOSUID | MS_NODEV
    if libc.mount(b"lxcfs-guard", mountpoint.encode(), b"fuse.lxcfs-guard", flags, opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class RawServer:
    def __init__(self, tree: Tree, resolver: Resolver, content: Content) -> None:
        self.tree, self.resolver, self.content = tree, resolver, content
        self.open_files: dict[int, bytes] = {}
        self.next_fh = 1
        now = int(time.time())
        self.attr: dict[int, bytes] = {}
        for inode, node in tree.nodes.items():
            size = 0 if node.is_dir else content.size_bound(node.name)
            self.attr[inode] = ATTR.pack(inode, size, 0, now, now, now, 0, 0, 0, node.mode,
                                         2 if node.is_dir else 1, 0, 0, 0, 4096, 0)
        self.entry_valid = 300
        self.file_attr_valid = 1

    def reply(self, fd: int, unique: int, payload: bytes = b"", error: int = 0) -> None:
        try:
            os.write(fd, OUT_HDR.pack(OUT_HDR.size + len(payload), -error, unique) + payload)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                raise

    def serve(self, fd: int) -> None:
        bufsize = (1 << 17) + 4096
        while True:
            try:
                req = os.read(fd, bufsize)
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in (errno.ENODEV, errno.EBADF):  # unmounted
                    return
                if e.errno in (errno.ENOENT, errno.EAGAIN):
                    continue
                raise
            _, op, unique, nodeid, _, _, pid, _, _ = IN_HDR.unpack_from(req)
            body = memoryview(req)[IN_HDR.size:]
            if op in NO_REPLY:
                continue
            try:
                self.dispatch(fd, op, unique, nodeid, pid, body)
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return
                raise

    def dispatch(self, fd: int, op: int, unique: int, nodeid: int, pid: int, body: memoryview) -> None:
        if op == OPEN:
            node = self.tree.nodes.get(nodeid)
            if node is None or node.is_dir:
                return self.reply(fd, unique, error=errno.EISDIR if node else errno.ENOENT)
            flags = struct.unpack_from("<I", body)[0]
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
                return self.reply(fd, unique, error=errno.EROFS)
            data = self.content.render(node.name, self.resolver.resolve(pid))
            fh = self.next_fh
            self.next_fh += 1
            self.open_files[fh] = data
            return self.reply(fd, unique, OPEN_OUT.pack(fh, FOPEN_DIRECT_IO, 0))
        if op == READ:
            fh, off, size = READ_IN.unpack_from(body)
            data = self.open_files.get(fh)
            if data is None:
                return self.reply(fd, unique, error=errno.EBADF)
            return self.reply(fd, unique, data[off:off + size] if off or size < len(data) else data)
        if op == RELEASE:
            self.open_files.pop(struct.unpack_from("<Q", body)[0], None)
            return self.reply(fd, unique)
        if op == LOOKUP:
            name = bytes(body).split(b"\0", 1)[0]
            node = self.tree.lookup(nodeid, name)
            if node is None:
                return self.reply(fd, unique, error=errno.ENOENT)
            valid = 0 if node.is_dir else self.file_attr_valid
            return self.reply(fd, unique, ENTRY_OUT.pack(node.inode, 0, self.entry_valid, valid, 0, 0)
                              + self.attr[node.inode])
        if op == GETATTR:
            node = self.tree.nodes.get(nodeid)
            if node is None:
                return self.reply(fd, unique, error=errno.ENOENT)
            valid = 0 if node.is_dir else self.file_attr_valid
            return self.reply(fd, unique, ATTR_OUT.pack(valid, 0, 0) + self.attr[nodeid])
        if op == INIT:
            major, minor, readahead, flags = INIT_IN.unpack_from(body)
            want = flags & (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES)
            return self.reply(fd, unique, INIT_OUT.pack(7, min(minor, 38), readahead, want, 16, 12, 1 << 17, 1,
                                                       32, 0, 0))
        if op == OPENDIR:
            node = self.tree.nodes.get(nodeid)
            if node is None or not node.is_dir:
                return self.reply(fd, unique, error=errno.ENOTDIR if node else errno.ENOENT)
            return self.reply(fd, unique, OPEN_OUT.pack(nodeid, 0, 0))
        if op == READDIR:
            fh, off, size = READ_IN.unpack_from(body)
            node = self.tree.nodes.get(fh)
            out = bytearray()
            for i, (name, inode) in enumerate(sorted(node.children.items()) if node else []):
                if i < off:
                    continue
                kind = stat.S_IFMT(self.tree.nodes[inode].mode) >> 12
                ent = DIRENT.pack(inode, i + 1, len(name), kind) + name
                ent += b"\0" * (-len(ent) % 8)
                if len(out) + len(ent) > size:
                    break
                out += ent
            return self.reply(fd, unique, bytes(out))
        if op in (RELEASEDIR, ACCESS):
            return self.reply(fd, unique)
        if op == STATFS:
            return self.reply(fd, unique, KSTATFS.pack(0, 0, 0, 0, 0, 4096, 255, 4096))
        if op == DESTROY:
            return self.reply(fd, unique)
        return self.reply(fd, unique, error=errno.ENOSYS)  # FLUSH, xattrs, anything else: once, then never


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--mountpoint", required=True)
    s.add_argument("--state-dir", default="")
    s.add_argument("--cache-ttl", type=float, default=0.1)
    s.add_argument("--cgroup-root", default="/sys/fs/cgroup")
    args = ap.parse_args()
    reader = open_reader(args.cgroup_root)
    server = RawServer(Tree(), Resolver(reader), Content(reader, "cpuset", args.cache_ttl, LoadSampler(reader)))
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    mount(args.mountpoint, fd)

    def stop(signum, frame):
        os.system(f"umount -l {args.mountpoint}")  # noqa: S605 - prototype
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.state_dir:  # what tests.support.daemon waits for
        os.makedirs(os.path.join(args.state_dir, "serve"), exist_ok=True)
        with open(os.path.join(args.state_dir, "serve", f"{os.getpid()}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "mountpoint": args.mountpoint}, f)
    server.serve(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
