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


def _line(label: str, kib: int) -> str:
    return _line_format(label) % kib


def _line_format(label: str) -> str:
    """The kernel's "%-16s%8lu kB" for one label, as a %-format of the figure alone (a line formatted from it
    costs half of one formatted from the label and the figure: a render formats 28)."""
    return (label + ":").ljust(16).replace("%", "%%") + "%8d kB\n"


def _host_value(line: str) -> int:
    try:
        return int(line.split()[1])
    except (IndexError, ValueError):
        return 0


# What a rendered line is made of: text of the host's to pass through, a figure of the cgroup's, or one of the
# two swap lines (the host's figure, capped by the cgroup's).
_PASS, _FIGURE, _SWAP_TOTAL, _SWAP_FREE = range(4)


@dataclass(frozen=True, slots=True)
class _Template:
    """The host file taken apart once (it is the same for every cgroup within a tick): runs of lines that pass
    through joined into one string, and the keys of the lines to rewrite, in the host's order."""

    # (kind, text: a passed-through run or the line's key, host figure, the line's format: _line_format)
    parts: tuple[tuple[int, str, int, str], ...]
    host_total: int
    has_zswap: bool
    host_swap: int  # the host's SwapTotal, kB


@per_host_text
def _compile(host: str) -> _Template:
    parts: list[tuple[int, str, int, str]] = []
    run: list[str] = []
    host_total = host_swap = 0
    for line in host.splitlines():
        key = line.split(":", 1)[0]
        kind = (
            _FIGURE
            if key in _FIGURES
            else _SWAP_TOTAL
            if key == "SwapTotal"
            else _SWAP_FREE
            if key == "SwapFree"
            else _PASS
        )
        if key == "MemTotal" and not host_total:
            host_total = _host_value(line)
        elif key == "SwapTotal":
            host_swap = _host_value(line)
        if kind == _PASS:
            run.append(line + "\n")
            continue
        if run:
            parts.append((_PASS, "".join(run), 0, ""))
            run = []
        parts.append((kind, key, 0 if kind == _FIGURE else _host_value(line), _line_format(key)))
    if run:
        parts.append((_PASS, "".join(run), 0, ""))
    return _Template(tuple(parts), host_total, "\nZswap:" in "\n" + host, host_swap)


def host_has_swap(host: str) -> bool:
    """Whether the cgroup's swap figures can show at all: a view's swap lines are the host's capped by the
    cgroup's, so on a host without swap (most Kubernetes nodes) they are 0 whatever the cgroup says, and the
    files behind them (v1: memory.memsw.usage_in_bytes and memory.swappiness, v2: memory.swap.current and
    memory.swap.max up the tree) need not be read: two of a v1 meminfo's four files."""
    return _compile(host).host_swap > 0


def _figures(mem: MemoryFacts, options: MeminfoOptions, host_total: int) -> dict[str, int]:
    """The lines the cgroup's figures replace, by key, in kB (SwapTotal/SwapFree are capped apart)."""
    s = mem.stat
    g = s.get

    def kb(key: str) -> int:
        return max(g(key, 0), 0) // 1024

    eff = effective_limit(mem, options)
    limit = eff // 1024 if eff is not None else host_total
    total = min(limit, host_total) if host_total else limit
    free = max(total - mem.usage // 1024, 0)
    # What could be had back: v1 (LXCFS 5.0.3, line for line) counts the page cache; on v2 (memory.stat has
    # slab figures) LXCFS 7.0's file LRU + reclaimable slab, closer to the kernel's own estimate (shmem in
    # the cache is not reclaimable without swap).
    if "slab_reclaimable" in s:
        reclaimable = (g("active_file", 0) + g("inactive_file", 0) + g("slab_reclaimable", 0)) // 1024
    else:
        reclaimable = kb("cache")
    return {
        "MemTotal": total,
        "MemFree": free,
        "MemAvailable": min(free + reclaimable, total),
        "Buffers": 0,
        "Cached": kb("cache"),
        "SwapCached": 0,
        "Active": (g("active_anon", 0) + g("active_file", 0)) // 1024,
        "Inactive": (g("inactive_anon", 0) + g("inactive_file", 0)) // 1024,
        "Active(anon)": kb("active_anon"),
        "Inactive(anon)": kb("inactive_anon"),
        "Active(file)": kb("active_file"),
        "Inactive(file)": kb("inactive_file"),
        "Unevictable": kb("unevictable"),
        "Dirty": kb("dirty"),
        "Writeback": kb("writeback"),
        "AnonPages": max(g("active_anon", 0) + g("inactive_anon", 0) - g("shmem", 0), 0) // 1024,
        "Mapped": kb("mapped_file"),
        "Shmem": kb("shmem"),
        "Slab": (g("slab_reclaimable", 0) + g("slab_unreclaimable", 0)) // 1024,
        "SReclaimable": kb("slab_reclaimable"),
        "SUnreclaim": kb("slab_unreclaimable"),
        "AnonHugePages": kb("rss_huge"),
        "ShmemHugePages": kb("shmem_thp"),
        "ShmemPmdMapped": 0,
        "Zswap": (mem.zswap or 0) // 1024 if options.zswap else 0,
        "Zswapped": (mem.zswapped or 0) // 1024 if options.zswap else 0,
    }


# the keys of the lines `_figures` rewrites: what a compiled host file marks as the cgroup's
_FIGURES = frozenset(_figures(MemoryFacts(limit=None, usage=0), DEFAULT_OPTIONS, 0))


def render_meminfo(host: str, mem: MemoryFacts, options: MeminfoOptions = DEFAULT_OPTIONS) -> str:
    tpl = _compile(host)
    replace = _figures(mem, options, tpl.host_total)
    swappiness_zero = mem.swappiness == 0
    swap_total: int | None = None  # None: the cgroup knows nothing, pass the host's through
    swap_free: int | None = None
    if mem.swap_accounting and mem.swap_limit is not None:
        swap_total = mem.swap_limit // 1024
        used = (mem.swap_usage or 0) // 1024
        swap_free = swap_total - used if swap_total >= used else 0
    # the kernel prints Zswap/Zswapped right after SwapFree; a host file without them (no CONFIG_ZSWAP) gets
    # them there only when the cgroup reports zswap figures
    insert_zswap = options.zswap and mem.zswap is not None and not tpl.has_zswap
    out: list[str] = []
    for kind, text, value, line in tpl.parts:
        if kind == _PASS:
            out.append(text)
        elif kind == _FIGURE:
            out.append(line % replace[text])
        elif kind == _SWAP_TOTAL:
            if swap_total is not None:
                value = min(value, swap_total)
            if swappiness_zero or not options.swap:
                value = 0
            out.append(line % value)
        else:  # SwapFree
            if swap_free is not None:
                value = min(value, swap_free)
            if swappiness_zero or not options.swap:
                value = 0
            out.append(line % value)
            if insert_zswap:
                out.append(_line("Zswap", replace["Zswap"]))
                out.append(_line("Zswapped", replace["Zswapped"]))
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
