"""A stub FUSE daemon a container could run: it mounts with any subtype (`lxcfs-guard` makes its fstype
ours) and can be made to answer statfs with an errno (a "dead" connection that is not dead) or to read a
request and never answer it (a wedged daemon: the caller then sleeps uninterruptibly until the connection
is aborted through fusectl).

Run: `python -m tests.support.stub_fuse MOUNTPOINT [--subtype S] [--hang statfs|lookup|read]
[--statfs-errno N] [--tree SPEC]`.
The tree (`--tree`): by default `/proc/meminfo` (as ours has), `/file`, `/big`; every file 64 KiB of "x".
From a test: `running(...)` starts it and cleans up, `give(...)` moves its mount into a container.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator

from lxcfs_guard.testing.supervise import fusectl_restored

TREE = "proc:d,proc/meminfo:f,file:f,big:f"  # path:kind (d or f), parents first
BIG_SIZE = 1 << 16


def main() -> None:  # pragma: no cover - runs as its own process
    import pyfuse3
    import trio

    p = argparse.ArgumentParser()
    p.add_argument("mountpoint")
    p.add_argument("--subtype", default="lxcfs-guard")
    p.add_argument("--hang", choices=("none", "statfs", "lookup", "read"), default="none")
    p.add_argument("--statfs-errno", type=int, default=0)
    p.add_argument("--tree", default=TREE)
    args = p.parse_args()

    root = pyfuse3.ROOT_INODE
    dirs = {root}
    children: dict[tuple[int, bytes], int] = {}
    names: dict[str, int] = {"": root}
    for n, item in enumerate(args.tree.split(","), start=root + 1):
        path, _, kind = item.partition(":")
        parent, _, name = path.rpartition("/")
        children[(names[parent], name.encode())] = names[path] = n
        if kind == "d":
            dirs.add(n)

    class Stub(pyfuse3.Operations):
        def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            a.st_mode = (stat.S_IFDIR | 0o755) if inode in dirs else (stat.S_IFREG | 0o644)
            a.st_nlink = 2 if inode in dirs else 1
            a.st_size = 0 if inode in dirs else BIG_SIZE
            a.st_blksize = 4096
            a.attr_timeout = a.entry_timeout = 0.0  # every walk asks the daemon again
            return a

        async def getattr(self, inode, ctx=None):
            return self._attr(inode)

        async def lookup(self, parent_inode, name, ctx=None):
            if args.hang == "lookup":
                await trio.sleep_forever()
            if (parent_inode, name) not in children:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(children[(parent_inode, name)])

        async def statfs(self, ctx):
            if args.hang == "statfs":
                await trio.sleep_forever()
            if args.statfs_errno:
                raise pyfuse3.FUSEError(args.statfs_errno)
            return pyfuse3.StatvfsData()

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode)

        async def read(self, fh, off, size):
            if args.hang == "read":
                await trio.sleep_forever()
            return (b"x" * BIG_SIZE)[off : off + size]

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            entries = [(name, inode) for (parent, name), inode in children.items() if parent == fh]
            for i, (name, inode) in enumerate(entries):
                if i >= start_id and not pyfuse3.readdir_reply(token, name, self._attr(inode), i + 1):
                    return

    pyfuse3.init(Stub(), args.mountpoint, {"fsname=stub", f"subtype={args.subtype}", "allow_other"})
    try:
        trio.run(pyfuse3.main, 4, 8)
    finally:
        pyfuse3.close(unmount=False)


@contextlib.contextmanager
def running(
    hang: str = "none", statfs_errno: int = 0, tree: str = TREE, subtype: str = "lxcfs-guard"
) -> Iterator[tuple[str, int]]:
    """The stub mounted on a fresh host directory; yields (that directory, the device). Hand it to a
    container with `give` (then nothing of it is left on the host: a hung stub must not be met by the
    host's own tools). On exit: the connection is aborted through fusectl (a caller wedged on it is let
    go), the stub is ended by pid, the directory removed."""
    import tempfile

    from lxcfs_guard.kernel import syscalls as sc
    from lxcfs_guard.testing.procs import is_mounted, stop, wait_for
    from lxcfs_guard.watchdog import fusectl

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    top = tempfile.mkdtemp(prefix="lxcfs-guard-stub-")
    cmd = [
        sys.executable,
        "-m",
        "tests.support.stub_fuse",
        top,
        "--subtype",
        subtype,
        "--hang",
        hang,
        "--statfs-errno",
        str(statfs_errno),
        "--tree",
        tree,
    ]
    proc = subprocess.Popen(cmd, cwd=repo, stdin=subprocess.DEVNULL)
    dev: int | None = None
    try:

        def mounted() -> bool:
            assert proc.poll() is None, f"stub exited with {proc.returncode}"
            return is_mounted(top)

        wait_for(mounted, timeout=20, what=f"the stub FUSE mount at {top}")
        fd = os.open(top, os.O_PATH | os.O_CLOEXEC)
        try:
            dev = sc.statx_cached(fd)[1]
        finally:
            os.close(fd)
        yield top, dev
    finally:
        with fusectl_restored():
            if dev is not None:
                fusectl.abort(dev)
        with contextlib.suppress(OSError):
            sc.umount2(top, sc.MNT_DETACH)
        stop(proc, timeout=10)
        with contextlib.suppress(OSError):
            os.rmdir(top)


def give(c: object, host_dir: str, target: str, bind: tuple[str, str] | None = None, keep: bool = True) -> None:
    """Move the stub mounted on `host_dir` into container `c` (a LightContainer) at `target` (a path
    inside it), then, with `bind` = (path in the stub, target), bind that part of it inside too (and with
    keep=False detach the stub's mount at `target`, leaving the bind alone). The host's copy is detached:
    afterwards the stub is mounted in the container's namespace only."""
    from lxcfs_guard.kernel import syscalls as sc

    clone = sc.open_tree(host_dir, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
    try:

        def inside() -> None:
            sc.move_mount(clone, -100, target, sc.MOVE_MOUNT_F_EMPTY_PATH)
            if bind:
                sc.mount(target + "/" + bind[0].lstrip("/"), bind[1], None, sc.MS_BIND)
            if not keep:
                sc.umount2(target, sc.MNT_DETACH)

        c.call(inside)  # type: ignore[attr-defined]
    finally:
        os.close(clone)
    sc.umount2(host_dir, sc.MNT_DETACH)


if __name__ == "__main__":
    main()
