"""/proc/pressure/{cpu,io,memory}: the caller's cgroup's own PSI file, passed through as the kernel wrote it.

Nothing is recomputed: the kernel already accounts stalls per cgroup. The view only checks that the text is
PSI lines (`some|full avg10=.. avg60=.. avg300=.. total=..`) so a wrong file can never be served as pressure;
anything else is None, and the caller then gets the host's file (as for every view).
"""

from __future__ import annotations

import re

_LINE = re.compile(r"(some|full) avg10=\d+\.\d+ avg60=\d+\.\d+ avg300=\d+\.\d+ total=\d+")


def render_pressure(text: str | None) -> str | None:
    if not text:
        return None
    lines = text.splitlines()
    if not lines or not all(_LINE.fullmatch(line) for line in lines):
        return None
    return text if text.endswith("\n") else text + "\n"


def parse_pressure(text: str) -> dict[str, dict[str, float]]:
    """ "some avg10=0.00 ... total=12" -> {"some": {"avg10": 0.0, ..., "total": 12.0}} (tests, tools)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        out[kind] = {k: float(v) for k, v in (f.split("=", 1) for f in fields)}
    return out
