"""cgroup v1 and v2 readers behind one interface; the cgroup root is a parameter so fixture trees work."""
