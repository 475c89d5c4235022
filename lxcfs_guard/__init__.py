"""lxcfs-guard: a cgroup-aware /proc for containers that survives its own daemon's death."""

__version__ = "0.1.0"
