"""Helpers shared by the real-kernel tests: cgroups, the daemon under test, processes. Every helper is a
context manager that undoes what it did, by pid and by path, even when the test fails."""
