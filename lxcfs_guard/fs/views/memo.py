"""A one-entry memo for parsing a host file: within a tick (fs/content.py) every render of every cgroup gets
the same host text, so it is taken apart once, not once per container."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_host_text(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse(text)`, recomputed only when `text` differs from the last one (same object: no comparison)."""
    last: list = [None, None]

    def cached(text: str) -> T:
        if last[0] is not text and last[0] != text:
            last[1] = parse(text)
            last[0] = text
        return last[1]

    cached.__name__, cached.__doc__ = parse.__name__, parse.__doc__
    return cached
