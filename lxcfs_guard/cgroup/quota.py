"""The CFS quota that binds a cgroup: the tightest `quota/period` from the cgroup up to the hierarchy's root.

A parent's quota caps everything below it (the kernel throttles each level), so a container whose own
cgroup says `max` under a parent limited to 3 CPUs has 3 CPUs, as LXCFS 7.0 computes it for --enable-cfs.
"""

from __future__ import annotations

from collections.abc import Callable

from lxcfs_guard.cgroup.base import ancestors, read_int, read_text


def tightest(pairs: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The (quota, period) with the smallest quota/period; unset levels are simply not in `pairs`."""
    best: tuple[int, int] | None = None
    for quota, period in pairs:
        if quota <= 0 or period <= 0:
            continue
        if best is None or quota * best[1] < best[0] * period:
            best = (quota, period)
    return best


def parse_cpu_max(text: str | None) -> tuple[int, int] | None:
    """v2 `cpu.max` ("50000 100000", or "max 100000" for none) -> (quota, period) or None."""
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


def _walk(rel: str, level: Callable[[str], tuple[int, int] | None]) -> tuple[int, int] | None:
    pairs = [p for p in (level(anc) for anc in ancestors(rel)) if p is not None]
    return tightest(pairs)


def quota_up_v2(root_dir: Callable[[str], str], rel: str) -> tuple[int, int] | None:
    """`root_dir(anc)` is the directory of ancestor `anc`; cpu.max of each level."""
    return _walk(rel, lambda anc: parse_cpu_max(read_text(f"{root_dir(anc)}/cpu.max")))


def quota_up_v1(root_dir: Callable[[str], str], rel: str) -> tuple[int, int] | None:
    """cpu.cfs_quota_us / cpu.cfs_period_us of each level of the v1 cpu hierarchy (-1 = no quota)."""

    def level(anc: str) -> tuple[int, int] | None:
        d = root_dir(anc)
        q = read_int(f"{d}/cpu.cfs_quota_us")
        if q is None or q <= 0:
            return None
        p = read_int(f"{d}/cpu.cfs_period_us")
        return (q, p) if p else None

    return _walk(rel, level)
