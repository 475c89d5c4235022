"""Small file-system facts every layer needs: how a dead FUSE connection answers, and how to replace a
state file so that a reader (another process, a crash halfway) sees the old content or the new, never half."""

from __future__ import annotations

import errno
import os

# What any syscall on a mount of a FUSE connection whose daemon is gone returns: ENOTCONN once the
# connection is torn down, ECONNABORTED for a request that was in flight when it was aborted.
DEAD_ERRNOS = frozenset((errno.ENOTCONN, errno.ECONNABORTED))


def write_atomic(path: str, data: bytes, *, durable: bool = False, mode: int = 0o644) -> None:
    """Replace `path` with `data` through a temp file and rename. `durable` also fsyncs the file and its
    directory, for state that must survive a power cut; files on /run (tmpfs) do not need it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
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
