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
from lxcfs_guard.fs.views.memo import per_host_text


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


def _line_format(label: str) -> str:
    """The kernel's "%-16s%8lu kB" for one label, as a %-format of the figure alone."""
    return (label + ":").ljust(16).replace("%", "%%") + "%8d kB\n"


def _host_value(line: str) -> int:
    try:
        return int(line.split()[1])
    except (IndexError, ValueError):
        return 0


# The lines a cgroup's figures replace, in the order `_figures` returns them; then the four values a render
# adds after them: the two swap lines (the host's figure, capped by the cgroup's) and the two zswap lines a
# host without zswap gets inserted after SwapFree when the cgroup reports them.
FIGURE_KEYS = (
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapCached",
    "Active",
    "Inactive",
    "Active(anon)",
    "Inactive(anon)",
    "Active(file)",
    "Inactive(file)",
    "Unevictable",
    "Dirty",
    "Writeback",
    "AnonPages",
    "Mapped",
    "Shmem",
    "Slab",
    "SReclaimable",
    "SUnreclaim",
    "AnonHugePages",
    "ShmemHugePages",
    "ShmemPmdMapped",
    "Zswap",
    "Zswapped",
)
_INDEX = {key: i for i, key in enumerate(FIGURE_KEYS)}
_SWAP_TOTAL, _SWAP_FREE = len(FIGURE_KEYS), len(FIGURE_KEYS) + 1
_ZSWAP, _ZSWAPPED = _INDEX["Zswap"], _INDEX["Zswapped"]


@dataclass(frozen=True, slots=True)
class _Template:
    """The host file taken apart once (it is the same for every cgroup within a tick) into one %-format of the
    whole file, whose lines the cgroup rewrites each hold a "%8d", and which value goes into each: a render is
    then one formatting of a tuple (it was 28 formatted lines joined: half of the render's time)."""

    fmt: str
    slots: tuple[int, ...]  # per "%8d", an index into _figures' values, then _SWAP_TOTAL / _SWAP_FREE
    fmt_zswap: str  # the same with Zswap and Zswapped inserted after SwapFree (a host without zswap)
    slots_zswap: tuple[int, ...]
    host_total: int
    has_zswap: bool
    host_swap: int  # the host's SwapTotal, kB
    host_swap_free: int  # the host's SwapFree, kB


@per_host_text
def _compile(host: str) -> _Template:
    plain: list[str] = []
    zswap: list[str] = []
    slots: list[int] = []
    slots_zswap: list[int] = []
    host_total = host_swap = host_swap_free = 0
    for line in host.splitlines():
        key = line.split(":", 1)[0]
        slot = _INDEX.get(key, _SWAP_TOTAL if key == "SwapTotal" else _SWAP_FREE if key == "SwapFree" else -1)
        if key == "MemTotal" and not host_total:
            host_total = _host_value(line)
        elif key == "SwapTotal":
            host_swap = _host_value(line)
        elif key == "SwapFree":
            host_swap_free = _host_value(line)
        if slot < 0:  # passed through
            text = line.replace("%", "%%") + "\n"
            plain.append(text)
            zswap.append(text)
            continue
        plain.append(_line_format(key))
        zswap.append(_line_format(key))
        slots.append(slot)
        slots_zswap.append(slot)
        if slot == _SWAP_FREE:
            zswap += [_line_format("Zswap"), _line_format("Zswapped")]
            slots_zswap += [_ZSWAP, _ZSWAPPED]
    return _Template(
        "".join(plain),
        tuple(slots),
        "".join(zswap),
        tuple(slots_zswap),
        host_total,
        "\nZswap:" in "\n" + host,
        host_swap,
        host_swap_free,
    )


def host_has_swap(host: str) -> bool:
    """Whether the cgroup's swap figures can show at all: a view's swap lines are the host's capped by the
    cgroup's, so on a host without swap (most Kubernetes nodes) they are 0 whatever the cgroup says, and the
    files behind them (v1: memory.memsw.usage_in_bytes and memory.swappiness, v2: memory.swap.current and
    memory.swap.max up the tree) need not be read: two of a v1 meminfo's four files."""
    return _compile(host).host_swap > 0


def _figures(mem: MemoryFacts, options: MeminfoOptions, host_total: int) -> list[int]:
    """The lines the cgroup's figures replace, in kB, in FIGURE_KEYS' order (the swap lines are capped apart)."""
    s = mem.stat
    g = s.get
    eff = effective_limit(mem, options)
    limit = eff // 1024 if eff is not None else host_total
    total = min(limit, host_total) if host_total else limit
    free = max(total - mem.usage // 1024, 0)
    active_anon, inactive_anon = g("active_anon", 0), g("inactive_anon", 0)
    active_file, inactive_file = g("active_file", 0), g("inactive_file", 0)
    cache, shmem = g("cache", 0), g("shmem", 0)
    sr, su = g("slab_reclaimable", 0), g("slab_unreclaimable", 0)
    # What could be had back: v1 (LXCFS 5.0.3, line for line) counts the page cache; on v2 (memory.stat has
    # slab figures) LXCFS 7.0's file LRU + reclaimable slab, closer to the kernel's own estimate (shmem in
    # the cache is not reclaimable without swap).
    reclaimable = (active_file + inactive_file + sr) // 1024 if "slab_reclaimable" in s else max(cache, 0) // 1024
    zswap = options.zswap
    return [
        total,
        free,
        min(free + reclaimable, total),
        0,  # Buffers
        max(cache, 0) // 1024,
        0,  # SwapCached
        (active_anon + active_file) // 1024,
        (inactive_anon + inactive_file) // 1024,
        max(active_anon, 0) // 1024,
        max(inactive_anon, 0) // 1024,
        max(active_file, 0) // 1024,
        max(inactive_file, 0) // 1024,
        max(g("unevictable", 0), 0) // 1024,
        max(g("dirty", 0), 0) // 1024,
        max(g("writeback", 0), 0) // 1024,
        max(active_anon + inactive_anon - shmem, 0) // 1024,  # AnonPages
        max(g("mapped_file", 0), 0) // 1024,
        max(shmem, 0) // 1024,
        (sr + su) // 1024,  # Slab
        max(sr, 0) // 1024,
        max(su, 0) // 1024,
        max(g("rss_huge", 0), 0) // 1024,  # AnonHugePages
        max(g("shmem_thp", 0), 0) // 1024,  # ShmemHugePages
        0,  # ShmemPmdMapped
        (mem.zswap or 0) // 1024 if zswap else 0,
        (mem.zswapped or 0) // 1024 if zswap else 0,
    ]


def render_meminfo(host: str, mem: MemoryFacts, options: MeminfoOptions = DEFAULT_OPTIONS) -> str:
    tpl = _compile(host)
    values = _figures(mem, options, tpl.host_total)
    swap_total, swap_free = tpl.host_swap, tpl.host_swap_free
    if mem.swap_accounting and mem.swap_limit is not None:  # otherwise the cgroup knows nothing: the host's
        limit = mem.swap_limit // 1024
        used = (mem.swap_usage or 0) // 1024
        swap_total = min(swap_total, limit)
        swap_free = min(swap_free, limit - used if limit >= used else 0)
    if mem.swappiness == 0 or not options.swap:
        swap_total = swap_free = 0
    values += (swap_total, swap_free)
    # the kernel prints Zswap/Zswapped right after SwapFree; a host file without them (no CONFIG_ZSWAP) gets
    # them there only when the cgroup reports zswap figures
    if options.zswap and mem.zswap is not None and not tpl.has_zswap:
        return tpl.fmt_zswap % tuple(map(values.__getitem__, tpl.slots_zswap))
    return tpl.fmt % tuple(map(values.__getitem__, tpl.slots))


def swap_numbers(host_meminfo: str, mem: MemoryFacts, options: MeminfoOptions = DEFAULT_OPTIONS) -> tuple[int, int]:
    """(SwapTotal, SwapTotal - SwapFree) in kB as the rendered meminfo shows them: /proc/swaps uses these."""
    total = used = 0
    for line in render_meminfo(host_meminfo, mem, options).splitlines():
        if line.startswith("SwapTotal:"):
            total = _host_value(line)
        elif line.startswith("SwapFree:"):
            used = total - _host_value(line)
    return total, max(used, 0)
