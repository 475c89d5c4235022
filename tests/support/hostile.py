"""What a hostile (or just unusual) unprivileged host user can do, done for real, for the tests of issue 11.

`foreign_fuse_mount()`: a FUSE mount made by `nobody` through the setuid `fusermount3`, whose fsname and
subtype are arbitrary bytes (`\\xff` by default: not UTF-8). Its daemon never answers: we hold the /dev/fuse
fd fusermount3 hands back and never read it, so anything of ours that touched the mount would hang (it
must not: mount tables are data, never paths to visit). Removed with a lazy unmount and by closing the fd.
"""

from __future__ import annotations

import array
import contextlib
import os
import pwd
import socket
import subprocess
import tempfile
from collections.abc import Iterator

from lxcfs_guard.kernel import syscalls

NOBODY = pwd.getpwnam("nobody")


def as_nobody(argv: list[str | bytes]) -> list[str | bytes]:
    """argv run as the unprivileged user `nobody` (no groups, no capabilities)."""
    return ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", "--", *argv]


@contextlib.contextmanager
def fuse_device_for_users() -> Iterator[None]:
    """/dev/fuse as a distribution leaves it (0666: udev's rule, and devtmpfs's own mode), for the duration.
    Some sandboxes create the node 0600, where no unprivileged user can mount FUSE at all and the
    hostile-user tests would test nothing; the mode found is put back afterwards."""
    mode = os.stat("/dev/fuse").st_mode & 0o777
    if mode & 0o666 == 0o666:
        yield
        return
    os.chmod("/dev/fuse", mode | 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


@contextlib.contextmanager
def foreign_fuse_mount(name: bytes = b"\xff") -> Iterator[str]:
    with fuse_device_for_users():
        yield from _foreign_fuse_mount(name)


def _foreign_fuse_mount(name: bytes) -> Iterator[str]:
    top = tempfile.mkdtemp(prefix="lxcfs-guard-hostile-")
    os.chmod(top, 0o755)
    mnt = os.path.join(top, "m")
    os.mkdir(mnt)
    os.chown(mnt, NOBODY.pw_uid, NOBODY.pw_gid)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fuse_fd = -1
    try:
        env = {"PATH": "/usr/bin:/bin", "_FUSE_COMMFD": str(theirs.fileno())}
        opts = b"fsname=" + name + b",subtype=" + name
        p = subprocess.run(
            as_nobody(["fusermount3", "-o", opts, "--", mnt]),
            env=env,
            pass_fds=[theirs.fileno()],
            capture_output=True,
            timeout=20,
        )
        theirs.close()
        assert p.returncode == 0, p.stderr
        _, anc, _, _ = ours.recvmsg(1, socket.CMSG_LEN(4))
        fds = array.array("i")
        fds.frombytes(anc[0][2][: fds.itemsize])
        fuse_fd = fds[0]
        with open("/proc/self/mountinfo", "rb") as f:  # raw bytes: this helper must not need our parser
            assert b" " + os.fsencode(mnt) + b" " in f.read()
        yield mnt
    finally:
        ours.close()
        with contextlib.suppress(OSError):
            theirs.close()
        with contextlib.suppress(OSError):
            syscalls.umount2(mnt, syscalls.MNT_DETACH)
        if fuse_fd >= 0:
            os.close(fuse_fd)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
            os.rmdir(top)


@contextlib.contextmanager
def hung_fuse_mount_in(pid: int, path: str) -> Iterator[None]:
    """A FUSE mount whose daemon never answers, on `path` in the mount namespace of `pid` (a container
    wedging whatever looks up a path beneath it). Made with the real fusermount3 inside that namespace; the
    connection is aborted (the fd closed) on exit, which releases every lookup stuck on it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fuse_fd = -1
    try:
        env = {"PATH": "/usr/bin:/bin", "_FUSE_COMMFD": str(theirs.fileno())}
        p = subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "--", "fusermount3", "-o", "fsname=wedge", "--", path],
            env=env,
            pass_fds=[theirs.fileno()],
            capture_output=True,
            timeout=20,
        )
        theirs.close()
        assert p.returncode == 0, p.stderr
        _, anc, _, _ = ours.recvmsg(1, socket.CMSG_LEN(4))
        fds = array.array("i")
        fds.frombytes(anc[0][2][: fds.itemsize])
        fuse_fd = fds[0]
        yield
    finally:
        ours.close()
        with contextlib.suppress(OSError):
            theirs.close()
        if fuse_fd >= 0:
            os.close(fuse_fd)  # aborts the connection: stuck lookups fail with ENOTCONN
        subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "umount", "-l", path], capture_output=True, timeout=20)
