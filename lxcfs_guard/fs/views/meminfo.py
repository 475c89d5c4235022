"""/proc/meminfo from a cgroup's memory facts, line for line like LXCFS 5.0.3 on cgroup v1.

The host file gives the keys and their order; lines the cgroup knows about are rewritten, the rest
(Mlocked, KernelStack, CommitLimit, ...) pass through, as LXCFS does. Two LXCFS gaps are closed:
AnonHugePages comes from rss_huge (LXCFS prints 0 on v1) and Mapped from file_mapped on v2 (LXCFS: 0).
"""

from __future__ import annotations

from lxcfs_guard.cgroup.facts import MemoryFacts


def _line(label: str, kib: int) -> str:
    return f"{label + ':':<16}{kib:>8} kB\n"


def _host_value(line: str) -> int:
    try:
        return int(line.split()[1])
    except (IndexError, ValueError):
        return 0


def render_meminfo(host: str, mem: MemoryFacts) -> str:
    s = mem.stat
    kb = lambda key: max(s.get(key, 0), 0) // 1024  # noqa: E731
    host_total = 0
    for line in host.splitlines():
        if line.startswith("MemTotal:"):
            host_total = _host_value(line)
            break
    limit = mem.limit // 1024 if mem.limit is not None else host_total
    total = min(limit, host_total) if host_total else limit
    usage = mem.usage // 1024
    free = max(total - usage, 0)
    swappiness_zero = mem.swappiness == 0

    swap_total: int | None = None  # None: the cgroup knows nothing, pass the host's through
    swap_free: int | None = None
    if mem.swap_accounting and mem.swap_limit is not None:
        swap_total = mem.swap_limit // 1024
        used = (mem.swap_usage or 0) // 1024
        swap_free = swap_total - used if swap_total >= used else 0

    replace: dict[str, int] = {
        "MemTotal": total,
        "MemFree": free,
        "MemAvailable": free + kb("cache"),
        "Buffers": 0,
        "Cached": kb("cache"),
        "SwapCached": 0,
        "Active": (s.get("active_anon", 0) + s.get("active_file", 0)) // 1024,
        "Inactive": (s.get("inactive_anon", 0) + s.get("inactive_file", 0)) // 1024,
        "Active(anon)": kb("active_anon"),
        "Inactive(anon)": kb("inactive_anon"),
        "Active(file)": kb("active_file"),
        "Inactive(file)": kb("inactive_file"),
        "Unevictable": kb("unevictable"),
        "Dirty": kb("dirty"),
        "Writeback": kb("writeback"),
        "AnonPages": max(s.get("active_anon", 0) + s.get("inactive_anon", 0) - s.get("shmem", 0), 0) // 1024,
        "Mapped": kb("mapped_file"),
        "Shmem": kb("shmem"),
        "Slab": (s.get("slab_reclaimable", 0) + s.get("slab_unreclaimable", 0)) // 1024,
        "SReclaimable": kb("slab_reclaimable"),
        "SUnreclaim": kb("slab_unreclaimable"),
        "AnonHugePages": kb("rss_huge"),
        "ShmemHugePages": kb("shmem_thp"),
        "ShmemPmdMapped": 0,
    }
    out: list[str] = []
    for line in host.splitlines():
        key = line.split(":", 1)[0]
        if key in replace:
            out.append(_line(key, replace[key]))
        elif key == "SwapTotal":
            value = _host_value(line)
            if swap_total is not None:
                value = min(value, swap_total)
            if swappiness_zero:
                value = 0
            out.append(_line(key, value))
        elif key == "SwapFree":
            value = _host_value(line)
            if swap_free is not None:
                value = min(value, swap_free)
            if swappiness_zero:
                value = 0
            out.append(_line(key, value))
        else:
            out.append(line + "\n")
    return "".join(out)


def swap_numbers(host_meminfo: str, mem: MemoryFacts) -> tuple[int, int]:
    """(SwapTotal, SwapTotal - SwapFree) in kB as the rendered meminfo shows them: /proc/swaps uses these."""
    total = used = 0
    for line in render_meminfo(host_meminfo, mem).splitlines():
        if line.startswith("SwapTotal:"):
            total = _host_value(line)
        elif line.startswith("SwapFree:"):
            used = total - _host_value(line)
    return total, max(used, 0)
