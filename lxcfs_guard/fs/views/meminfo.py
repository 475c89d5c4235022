"""/proc/meminfo from a cgroup's memory facts, line for line like LXCFS 5.0.3 on cgroup v1.

The host file gives the keys and their order; lines the cgroup knows about are rewritten, the rest
(Mlocked, KernelStack, CommitLimit, ...) pass through, as LXCFS does. Two LXCFS gaps are closed:
AnonHugePages comes from rss_huge (LXCFS prints 0 on v1) and Mapped from file_mapped on v2 (LXCFS: 0).

Past LXCFS: with `memory_high` the smaller of memory.max and memory.high (each the smallest up the tree) is
the container's memory: above memory.high the kernel throttles and reclaims the cgroup hard, so memory a
program plans to use beyond it is not really there. MemFree and MemAvailable follow from that MemTotal.
Zswap/Zswapped (LXCFS 7.0) come from memory.stat on v2; v1 keeps no per-cgroup zswap figures, so they read 0
there rather than the host's pool, which belongs to every cgroup.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxcfs_guard.cgroup.facts import MemoryFacts


@dataclass(frozen=True, slots=True)
class MeminfoOptions:
    """What a daemon was told to virtualize (LXCFS's -u/--disable-swap, -z/--disable-zswap; ours
    --memory-high)."""

    swap: bool = True
    zswap: bool = True
    memory_high: bool = True


DEFAULT_OPTIONS = MeminfoOptions()


def effective_limit(mem: MemoryFacts, options: MeminfoOptions = DEFAULT_OPTIONS) -> int | None:
    """The bytes the view calls MemTotal before capping at the host: memory.max, or memory.high if lower."""
    limit = mem.limit
    if options.memory_high and mem.high is not None and (limit is None or mem.high < limit):
        limit = mem.high
    return limit


def _line(label: str, kib: int) -> str:
    return f"{label + ':':<16}{kib:>8} kB\n"


def _host_value(line: str) -> int:
    try:
        return int(line.split()[1])
    except (IndexError, ValueError):
        return 0


def render_meminfo(host: str, mem: MemoryFacts, options: MeminfoOptions = DEFAULT_OPTIONS) -> str:
    s = mem.stat

    def kb(key: str) -> int:
        return max(s.get(key, 0), 0) // 1024

    host_total = 0
    for line in host.splitlines():
        if line.startswith("MemTotal:"):
            host_total = _host_value(line)
            break
    eff = effective_limit(mem, options)
    limit = eff // 1024 if eff is not None else host_total
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
    # What could be had back: v1 (LXCFS 5.0.3, line for line) counts the page cache; on v2 (memory.stat has
    # slab figures) LXCFS 7.0's file LRU + reclaimable slab, closer to the kernel's own estimate (shmem in
    # the cache is not reclaimable without swap).
    if "slab_reclaimable" in s:
        reclaimable = (s.get("active_file", 0) + s.get("inactive_file", 0) + s.get("slab_reclaimable", 0)) // 1024
    else:
        reclaimable = kb("cache")
    zswap = (mem.zswap or 0) // 1024 if options.zswap else 0
    zswapped = (mem.zswapped or 0) // 1024 if options.zswap else 0
    # the kernel prints Zswap/Zswapped right after SwapFree; a host file without them (no CONFIG_ZSWAP) gets
    # them there only when the cgroup reports zswap figures
    insert_zswap = options.zswap and mem.zswap is not None and "\nZswap:" not in "\n" + host

    replace: dict[str, int] = {
        "MemTotal": total,
        "MemFree": free,
        "MemAvailable": min(free + reclaimable, total),
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
        "Zswap": zswap,
        "Zswapped": zswapped,
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
            if swappiness_zero or not options.swap:
                value = 0
            out.append(_line(key, value))
        elif key == "SwapFree":
            value = _host_value(line)
            if swap_free is not None:
                value = min(value, swap_free)
            if swappiness_zero:
                value = 0
            if not options.swap:
                value = 0
            out.append(_line(key, value))
            if insert_zswap:
                out.append(_line("Zswap", zswap))
                out.append(_line("Zswapped", zswapped))
        else:
            out.append(line + "\n")
    return "".join(out)


def swap_numbers(host_meminfo: str, mem: MemoryFacts, options: MeminfoOptions = DEFAULT_OPTIONS) -> tuple[int, int]:
    """(SwapTotal, SwapTotal - SwapFree) in kB as the rendered meminfo shows them: /proc/swaps uses these."""
    total = used = 0
    for line in render_meminfo(host_meminfo, mem, options).splitlines():
        if line.startswith("SwapTotal:"):
            total = _host_value(line)
        elif line.startswith("SwapFree:"):
            used = total - _host_value(line)
    return total, max(used, 0)
