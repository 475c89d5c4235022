"""A daemon under test that a test can SIGKILL and start again on the same mountpoint, as a crash and a
restart do: `lxcfs-guard serve` (lxcfs_guard.testing.daemon.serve) or, with lxcfs=True, Debian's LXCFS."""

from __future__ import annotations

import contextlib
import os
import signal

from lxcfs_guard.testing.daemon import lxcfs_reference, serve


def _lxcfs_pid(mountpoint: str) -> int:
    """The pid of the lxcfs serving `mountpoint` (a unique temp dir, so no other lxcfs matches)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
                if argv and argv[0].endswith(b"lxcfs") and mountpoint.encode() in argv:
                    return int(name)
    raise RuntimeError(f"no lxcfs serving {mountpoint}")


class Restartable:
    """`start()`, `kill()` (SIGKILL, then the dead mount is detached from the host mountpoint, as a
    supervisor does before restarting), `start()` again; `close()` (or the with-block) stops it for good."""

    def __init__(self, mountpoint: str, state_dir: str, lxcfs: bool = False) -> None:
        self.mountpoint = mountpoint
        self.state_dir = state_dir
        self.lxcfs = lxcfs
        self.fstype = "fuse.lxcfs" if lxcfs else "fuse.lxcfs-guard"
        self.pid = 0
        self._ctx: contextlib.AbstractContextManager | None = None

    @property
    def dev(self) -> int:
        return os.stat(self.mountpoint).st_dev

    def start(self) -> Restartable:
        if self.lxcfs:
            self._ctx = lxcfs_reference(self.mountpoint)
            self._ctx.__enter__()
            self.pid = _lxcfs_pid(self.mountpoint)
        else:
            self._ctx = serve(self.mountpoint, self.state_dir)
            self.pid = self._ctx.__enter__().pid
        return self

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

    def __enter__(self) -> Restartable:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
