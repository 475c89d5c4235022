"""Run pyfuse3's request loop as a plain blocking loop, without an event loop under it.

pyfuse3 looks its async library up as the module global `pyfuse3.trio` on every use (that is how its own
asyncio mode works), so a worker can hand it this small stand-in instead of trio. A serving worker needs no
event loop: its handlers never await (every one runs to completion), it has exactly one request in flight,
and it waits for the next request inside read(2) on its own blocking clone of the device fd, where the
kernel wakes exactly one waiting worker per request. What trio would add is a scheduler round, an epoll
registration and a checkpoint per request: measured on this machine kind, meminfo with `--cache-ttl 0`,
one reader, 5,000 reads a run: 596-650 ms of daemon CPU per 1000 reads under trio against 336-378 with
this loop (LXCFS 5.0.3 in the same runs: 364-430).

`run(coro)` drives a coroutine that must never suspend; if a handler ever awaits something that does,
it fails loudly (RuntimeError) instead of stalling the worker.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Coroutine
from typing import Any


class ClosedResourceError(Exception):
    """trio's name for "the fd was closed while waiting"; pyfuse3 catches it by this name."""


class _Task:
    name = "pyfuse-worker"


class Lock:
    """pyfuse3 serialises its readers with a lock; one request at a time needs none."""

    async def __aenter__(self) -> Lock:
        return self

    async def __aexit__(self, *exc: object) -> bool:
        return False


class _Nursery:
    """Runs what is started in it one after another, when the `async with` block ends. With max_tasks=1
    pyfuse3 starts exactly one session loop, which returns when the kernel ends the session."""

    def __init__(self) -> None:
        self.pending: list[Coroutine[Any, Any, Any]] = []

    async def __aenter__(self) -> _Nursery:
        return self

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None) -> None:
        self.pending.append(fn(*args))

    async def __aexit__(self, *exc: object) -> bool:
        while self.pending:
            await self.pending.pop(0)
        return False


def open_nursery() -> _Nursery:
    return _Nursery()


def _stand_in(wait_readable: Callable[[int], Coroutine[Any, Any, None]]) -> types.ModuleType:
    """The module pyfuse3 is given as `trio`. `wait_readable` is where a worker checks for a stop request
    before it blocks in read(2) for the next request (the fd is blocking, so there is nothing to wait for)."""
    module = types.ModuleType("lxcfs_guard.fs.syncloop.trio")
    # attr-defined: mypy knows no attributes of a module made at run time; these are the ones pyfuse3 uses
    module.ClosedResourceError = ClosedResourceError  # type: ignore[attr-defined]
    module.Lock = Lock  # type: ignore[attr-defined]
    module.open_nursery = open_nursery  # type: ignore[attr-defined]
    module.lowlevel = types.SimpleNamespace(  # type: ignore[attr-defined]
        wait_readable=wait_readable,
        notify_closing=lambda fd: None,
        current_task=lambda: _Task,
        current_trio_token=lambda: None,
    )
    return module


def import_pyfuse3() -> Any:
    """pyfuse3, imported without trio: it imports trio at the top (about 14 MB of a serve process's 23 MB
    before it serves) although the blocking loop never uses it, and importlib.metadata for its version (see
    `_metadata_stand_in`). Each stand-in is in sys.modules only while pyfuse3 imports, so anything that
    imports the real module later gets it; `install` then gives pyfuse3 the trio stand-in it runs with."""
    if "pyfuse3" in sys.modules or "trio" in sys.modules:
        import pyfuse3

        return pyfuse3

    async def not_installed(fd: int) -> None:
        raise RuntimeError("syncloop.install() was not called before pyfuse3's loop")

    stand_ins = {"trio": _stand_in(not_installed), "importlib.metadata": _metadata_stand_in()}
    lent = [name for name in stand_ins if name not in sys.modules]
    for name in lent:
        sys.modules[name] = stand_ins[name]
    try:
        import pyfuse3
    finally:
        for name in lent:
            del sys.modules[name]
    return pyfuse3


def _metadata_stand_in() -> types.ModuleType:
    """pyfuse3 asks importlib.metadata for its own version only; the real module imports email, zipfile,
    csv, tempfile, random and datetime (about 2 MB of every serving process). The stand-in reads the
    version from the name of pyfuse3's dist-info directory instead."""
    module = types.ModuleType("importlib.metadata")

    class PackageNotFoundError(ModuleNotFoundError):
        pass

    def version(name: str) -> str:
        prefix = f"{name}-"
        for entry in sys.path:
            try:
                names = os.listdir(entry or ".")
            except OSError:
                continue
            for n in names:
                if n.startswith(prefix) and n.endswith(".dist-info"):
                    return n[len(prefix) : -len(".dist-info")]
        raise PackageNotFoundError(name)

    module.PackageNotFoundError = PackageNotFoundError  # type: ignore[attr-defined]
    module.version = version  # type: ignore[attr-defined]
    return module


def install(pyfuse3_module: Any, wait_readable: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Make `pyfuse3_module` use the blocking loop from now on (in this process only: call it in a worker)."""
    pyfuse3_module.trio = _stand_in(wait_readable)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive `coro` to its end on this thread; it must never suspend."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a FUSE handler awaited something that suspends; the blocking loop cannot wait")
