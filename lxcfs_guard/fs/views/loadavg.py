"""/proc/loadavg of a cgroup, with the kernel's own fixed-point decay (kernel/sched/loadavg.c), so the
numbers move like the host's would for the same task counts sampled every 5 s."""

from __future__ import annotations

FSHIFT = 11
FIXED_1 = 1 << FSHIFT
EXP_1 = 1884  # 1/exp(5sec/1min) as fixed-point
EXP_5 = 2014  # 1/exp(5sec/5min)
EXP_15 = 2037  # 1/exp(5sec/15min)


def calc_load(load: int, exp: int, active: int) -> int:
    newload = load * exp + active * (FIXED_1 - exp)
    if active >= load:
        newload += FIXED_1 - 1
    return newload // FIXED_1


def decay(avg: tuple[int, int, int], nr_active: int) -> tuple[int, int, int]:
    """One 5-second step of the three averages for `nr_active` running + uninterruptible tasks."""
    active = max(nr_active, 0) * FIXED_1
    return (calc_load(avg[0], EXP_1, active), calc_load(avg[1], EXP_5, active), calc_load(avg[2], EXP_15, active))


def _fmt(x: int) -> str:
    x += FIXED_1 // 200
    return f"{x >> FSHIFT}.{((x & (FIXED_1 - 1)) * 100) >> FSHIFT:02d}"


def render_loadavg(avg: tuple[int, int, int], running: int, total: int, last_pid: int) -> str:
    return f"{_fmt(avg[0])} {_fmt(avg[1])} {_fmt(avg[2])} {running}/{total} {last_pid}\n"


def host_last_pid(host: str) -> int:
    try:
        return int(host.split()[4])
    except (IndexError, ValueError):
        return 0
