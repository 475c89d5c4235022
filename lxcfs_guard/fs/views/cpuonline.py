"""sys/devices/system/cpu/online: the CPUs a cgroup may use, in the kernel's list syntax."""

from __future__ import annotations

from lxcfs_guard.cgroup.base import format_cpu_list


def render_cpu_online(cpus: tuple[int, ...] | list[int]) -> str:
    return format_cpu_list(list(cpus)) + "\n"


def render_cpu_online_count(n: int) -> str:
    """With the quota view the container sees CPUs 0..n-1."""
    return ("0" if n <= 1 else f"0-{n - 1}") + "\n"
