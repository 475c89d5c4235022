"""/proc/swaps: the header, then one `none virtual` line with the cgroup's swap (only when it has any),
like LXCFS."""

from __future__ import annotations

HEADER = "Filename\t\t\t\tType\t\tSize\tUsed\tPriority\n"


def render_swaps(total_kb: int, used_kb: int) -> str:
    if total_kb <= 0:
        return HEADER
    return HEADER + f"none{' ' * 36}virtual\t\t{total_kb}\t{used_kb}\t0\n"
