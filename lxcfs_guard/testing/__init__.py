"""The harness shared by the tests, the benchmarks and `make demo`: real cgroups, the daemon and the
watchdog under test, light containers, reader fleets and processes. Every helper is a context manager that
undoes what it did, by pid and by path, even when its caller failed. It lives in the package (not in tests/)
because the demo is part of the package and bench/ must not import tests/; nothing of the guard imports it."""
