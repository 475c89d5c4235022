"""Small helpers for the v2 tests: run a reader inside a cgroup, parse what it read, read cgroup files."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from lxcfs_guard.testing.cgroups import TestCgroup

# Reads each file given as an argument and ends it with a NUL, so one process reads them all back to back.
_CAT_ALL = 'for f in "$@"; do cat "$f" || echo "CAT-FAILED $f"; printf "\\0"; done'


def _joiner(cgroup_dir: str):
    def join() -> None:
        with open(f"{cgroup_dir}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    return join


def read_in(cg: TestCgroup | str, *paths: str, prefix: Sequence[str] = (), timeout: float = 60) -> list[str]:
    """Read `paths` from one short-lived process inside the cgroup (so a FUSE daemon sees that cgroup as the
    caller's); `prefix` wraps it (e.g. `unshare --pid --fork`). Returns the contents, in order."""
    cgroup_dir = cg if isinstance(cg, str) else cg.paths["unified"]
    res = subprocess.run(
        [*prefix, "sh", "-c", _CAT_ALL, "sh", *paths],
        capture_output=True,
        preexec_fn=_joiner(cgroup_dir),
        timeout=timeout,
        check=True,
    )
    parts = res.stdout.decode().split("\0")[: len(paths)]
    for path, text in zip(paths, parts, strict=True):
        assert not text.startswith("CAT-FAILED"), f"reading {path} failed: {res.stderr.decode()}"
    return parts


def start_in(cg: TestCgroup, argv: Sequence[str], **kw) -> subprocess.Popen:
    """A process that starts life inside the cgroup (the caller ends it by pid, or make_cgroup's exit does)."""
    return subprocess.Popen(list(argv), preexec_fn=_joiner(cg.paths["unified"]), **kw)


def cgfile(cg: TestCgroup | str, name: str) -> str:
    cgroup_dir = cg if isinstance(cg, str) else cg.paths["unified"]
    with open(f"{cgroup_dir}/{name}") as f:
        return f.read()


def keyed(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.stat) -> dict."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def meminfo_kb(text: str) -> dict[str, int]:
    """/proc/meminfo -> {field: kB}."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


def processors(cpuinfo: str) -> list[int]:
    """The `processor : N` numbers of a cpuinfo text."""
    return [int(line.split(":")[1]) for line in cpuinfo.splitlines() if line.startswith("processor")]


def stat_cpu_lines(text: str) -> dict[str, list[int]]:
    """/proc/stat -> {"cpu": [...], "cpu0": [...], ...}."""
    return {line.split()[0]: [int(x) for x in line.split()[1:]] for line in text.splitlines() if line.startswith("cpu")}


def io_stat(text: str) -> dict[str, dict[str, int]]:
    """io.stat -> {"254:0": {"rbytes": .., "wbytes": .., ...}}."""
    out = {}
    for line in text.splitlines():
        dev, *kvs = line.split()
        out[dev] = {k: int(v) for k, v in (kv.split("=") for kv in kvs)}
    return out


def diskstats(text: str) -> dict[str, list[int]]:
    """/proc/diskstats -> {"vda": [major, minor, reads, rmerged, rsectors, rticks, writes, wmerged, wsectors, ...]}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        out[parts[2]] = [int(parts[0]), int(parts[1])] + [int(x) for x in parts[3:]]
    return out
