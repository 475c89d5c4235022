"""/proc/stat with one cpuN line per visible CPU carrying the cgroup's own user/system time,
and everything the cgroup did not use counted as idle, like LXCFS on v1. On v2, where cpu.stat has only
totals (LXCFS shows the host there, #593), the totals are spread evenly over the visible CPUs.

Built as a list of lines, never into a buffer sized from the host file (LXCFS #694 truncated it).
"""

from __future__ import annotations

from lxcfs_guard.cgroup.facts import CpuUsage
from lxcfs_guard.fs.views.memo import per_host_text

NS_PER_TICK = 10_000_000  # USER_HZ is 100 on every Linux ABI


def _cpu_fields(line: str) -> tuple[str, list[int]]:
    parts = line.split()
    nums = []
    for p in parts[1:]:
        try:
            nums.append(int(p))
        except ValueError:
            nums.append(0)
    return parts[0], nums


@per_host_text
def _parse_host(host: str) -> tuple[dict[int, list[int]], str]:
    """(host CPU number -> its ten counters, the lines after the cpu lines as one text)."""
    host_cpu: dict[int, list[int]] = {}
    rest: list[str] = []
    for line in host.splitlines():
        if line.startswith("cpu"):
            name, nums = _cpu_fields(line)
            if name != "cpu":
                try:  # noqa: SIM105 - once per host CPU on each render: suppress() costs 0.3 us more
                    host_cpu[int(name[3:])] = nums
                except ValueError:
                    pass
        else:
            rest.append(line)
    for nums in host_cpu.values():
        nums += [0] * (10 - len(nums))
    return host_cpu, "".join(line + "\n" for line in rest)


def render_stat(host: str, cpus: tuple[int, ...] | list[int], usage: CpuUsage, renumber: bool = False) -> str:
    """`renumber` False keeps the host's cpuN names (LXCFS 5.0.3 does, while cpuinfo is renumbered);
    True names them cpu0..N-1 (the quota view, where the container sees CPUs 0..N-1 everywhere).

    Only user, system and idle of a view's rows are ever non-zero, so each row is formatted from those three
    (one %-format a line, not ten str() calls and a join)."""
    host_cpu, rest = _parse_host(host)
    shown = [c for c in cpus if c in host_cpu]
    n = len(shown) or 1
    per_cpu = usage.per_cpu
    even_user, even_system = usage.user // n, usage.system // n
    lines = [""]
    total_user = total_system = total_idle = 0
    for i, cpu in enumerate(shown):
        h = host_cpu[cpu]
        u_ns, s_ns = per_cpu.get(cpu, (0, 0)) if per_cpu else (even_user, even_system)
        user, system = u_ns // NS_PER_TICK, s_ns // NS_PER_TICK
        idle = h[3]
        all_used = h[0] + h[1] + h[2] + h[4] + h[5] + h[6] + h[7] + h[8] + h[9]
        cg_used = user + system
        if all_used >= cg_used:
            idle += all_used - cg_used
        total_user += user
        total_system += system
        total_idle += idle
        lines.append(_ROW % (i if renumber else cpu, user, system, idle))
    lines[0] = _TOTAL % (total_user, total_system, total_idle)
    lines.append(rest)
    return "".join(lines)


_TOTAL = "cpu  %d 0 %d %d 0 0 0 0 0 0\n"
_ROW = "cpu%d %d 0 %d %d 0 0 0 0 0 0\n"
