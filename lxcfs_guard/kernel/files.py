"""Small file-system facts every layer needs: how a dead FUSE connection answers, how to replace a
state file so that a reader (another process, a crash halfway) sees the old content or the new, never half,
and how state and lock files are kept private to root.

The state directory holds the registry, the status file and the locks every command takes. `flock` needs
only a read fd, so a lock file any user can open is a lock any user can hold forever: the directory is
0700 and every file in it 0600, opened with O_NOFOLLOW (a symlink planted there is refused, not followed)
and refused if someone else owns it; and every lock is taken with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time

# What any syscall on a mount of a FUSE connection whose daemon is gone returns: ENOTCONN once the
# connection is torn down, ECONNABORTED for a request that was in flight when it was aborted.
DEAD_ERRNOS = frozenset((errno.ENOTCONN, errno.ECONNABORTED))


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
LOCK_POLL = 0.005  # seconds between attempts while a lock is held elsewhere (doubling up to 50 ms)


class LockTimeout(TimeoutError):
    """A lock was not free before the deadline (another command holds it, or is wedged holding it)."""


def private_dir(path: str) -> None:
    """Make `path` (and missing parents) a directory only its owner (root) can enter: 0700, not a symlink,
    owned by us. An existing directory with a wider mode is narrowed."""
    os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(errno.EPERM, "not a directory of ours (a symlink, or owned by someone else): refused", path)
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)


def open_private(path: str, flags: int = os.O_RDONLY, *, create: bool = True) -> int:
    """Open a state file: never through a symlink, only a regular file we own, 0600 (narrowed if an older
    version made it wider). Raises OSError(EPERM) for anything else."""
    extra = (os.O_CREAT if create else 0) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    fd = os.open(path, flags | extra, PRIVATE_FILE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, "not a regular file of ours: refused", path)
        if stat.S_IMODE(st.st_mode) != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_lock(path: str) -> int:
    """A lock file's fd (private, see open_private; close-on-exec, so no child keeps the lock)."""
    return open_private(path, os.O_RDWR)


def lock(fd: int, deadline: float | None, *, exclusive: bool = True) -> None:
    """flock `fd`, giving up at `deadline` (time.monotonic(); None or now: one try) with LockTimeout.
    Polls with LOCK_NB: a blocking flock cannot be given a deadline without signals."""
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    delay = LOCK_POLL
    while True:
        try:
            fcntl.flock(fd, op)
            return
        except BlockingIOError:
            remaining = (deadline or 0.0) - time.monotonic()
            if deadline is None or remaining <= 0:
                raise LockTimeout(errno.ETIMEDOUT, "lock held elsewhere past the deadline") from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)


def write_atomic(path: str, data: bytes, *, durable: bool = False, mode: int = PRIVATE_FILE) -> None:
    """Replace `path` with `data` through a temp file and rename. `durable` also fsyncs the file and its
    directory, for state that must survive a power cut; files on /run (tmpfs) do not need it. The temp file
    is created afresh (O_EXCL, O_NOFOLLOW): a file or symlink planted under its name is never written."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # ours from a crashed run with the same pid, or planted: either way not written into
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if durable:
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
