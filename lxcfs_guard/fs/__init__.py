"""The FUSE filesystem: a read request goes operations -> caller (whose cgroup?) -> cgroup readers -> views."""
