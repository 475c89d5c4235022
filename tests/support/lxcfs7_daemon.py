"""A running LXCFS 7.0.0 (the v2 reference) on a temp mountpoint: `with lxcfs7(args) as mnt:`.

Started, killed by pid and unmounted by the same lxcfs_reference that runs Debian's 5.0.3."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from lxcfs_guard.testing.daemon import lxcfs_reference


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
    env = dict(os.environ, LD_LIBRARY_PATH=build)
    with lxcfs_reference(args=args, timeout=timeout, binary=f"{build}/lxcfs", env=env) as mountpoint:
        yield mountpoint
