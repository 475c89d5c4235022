"""Which CPUs a container sees: its cpuset (cut to the online ones), and with the quota view at most
ceil(quota/period) of them (LXCFS's --enable-cfs)."""

from __future__ import annotations

from lxcfs_guard.cgroup.facts import CpuFacts

CPU_VIEWS = ("cpuset", "quota")


def quota_cpus(facts: CpuFacts) -> int | None:
    if facts.quota is None or not facts.period or facts.quota <= 0:
        return None
    return max(1, -(-facts.quota // facts.period))


def visible_cpus(host_online: tuple[int, ...], facts: CpuFacts | None, view: str = "cpuset") -> tuple[int, ...]:
    """Host CPU numbers the container sees, in order. Never empty: an empty intersection means the
    facts are stale, so the host's list is the honest answer."""
    cpus = host_online
    if facts is not None and facts.cpus is not None:
        online = set(host_online)
        cut = tuple(c for c in facts.cpus if c in online) if online else facts.cpus
        if cut:
            cpus = cut
    if view == "quota" and facts is not None:
        n = quota_cpus(facts)
        if n is not None and n < len(cpus):
            cpus = cpus[:n]
    return cpus
