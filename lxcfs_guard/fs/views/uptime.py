"""/proc/uptime of a container: the age of its init, and as idle whatever of that its cgroup did not
spend on a CPU (LXCFS semantics)."""

from __future__ import annotations


def render_uptime(age_s: float, busy_s: float) -> str:
    age_s = max(age_s, 0.0)
    idle = age_s - busy_s if age_s >= busy_s else age_s
    return f"{age_s:.2f} {idle:.2f}\n"
