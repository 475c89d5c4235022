"""A running LXCFS 7.0.0 (the v2 reference) on a temp mountpoint: `with lxcfs7(args) as mnt:`.

Killed by pid and force-unmounted afterwards, like tests.support.daemon.lxcfs_reference for 5.0.3."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

from lxcfs_guard.testing.daemon import _answers, _mount_fstype
from lxcfs_guard.testing.procs import force_unmount, is_mounted, stop, wait_for


def lxcfs7_build() -> str:
    """The LXCFS 7.0.0 build directory `make test-v2` prepared; a clear failure when it could not."""
    build = os.environ.get("LXCFS7_BUILD")
    if not build:
        from tests.support.lxcfs7 import ensure_lxcfs7

        try:
            build = str(ensure_lxcfs7())
        except Exception as e:
            raise AssertionError(f"LXCFS 7.0.0 unavailable: {os.environ.get('LXCFS7_MISSING') or e}") from e
    return build


@contextlib.contextmanager
def lxcfs7(args: tuple[str, ...] = (), timeout: float = 120.0) -> Iterator[str]:
    build = lxcfs7_build()
    mountpoint = tempfile.mkdtemp(prefix="lxcfs7-")
    pidfile = os.path.join(tempfile.gettempdir(), f"lxcfs7-{os.getpid()}-{time.monotonic_ns()}.pid")
    env = dict(os.environ, LD_LIBRARY_PATH=build)
    proc = subprocess.Popen(
        [f"{build}/lxcfs", "-p", pidfile, *args, mountpoint],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"lxcfs 7.0.0 exited with {proc.returncode}")
            return _mount_fstype(mountpoint) == "fuse.lxcfs" and _answers(os.path.join(mountpoint, "proc/meminfo"))

        wait_for(ready, timeout, 0.1, "lxcfs 7.0.0 to mount")
        yield mountpoint
    finally:
        stop(proc)
        force_unmount(mountpoint)
        with contextlib.suppress(OSError):
            os.unlink(pidfile)
        if not is_mounted(mountpoint):
            shutil.rmtree(mountpoint, ignore_errors=True)
