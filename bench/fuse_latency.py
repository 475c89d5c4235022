"""Where a busy node's read latency goes, request by request: bench/fleet.py under the kernel's FUSE tracepoints.

bench/fleet.py measures a whole read (open, read to the end, close) from inside the reader. This runs it once per
daemon (lxcfs-guard, then LXCFS 5.0.3) under `perf record -a -e fuse:fuse_request_send,fuse:fuse_request_end`
(Linux 6.16+) and prints, per request kind, how long the kernel waited from queueing a request to its reply:
the daemon's queue, its wake-up and its work together. Tracing slows both daemons a little; compare them with
each other, not with fleet.py's figures.

    .venv/bin/python bench/fuse_latency.py [--n 200] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

FLEET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fleet.py")
EVENTS = ("fuse:fuse_request_send", "fuse:fuse_request_end")
# perf script: "comm pid [cpu] secs.usecs: fuse:fuse_request_send: connection C req U opcode N (NAME) len L"
LINE = re.compile(
    rb"\s(\d+\.\d+):\s+fuse:fuse_request_(send|end):\s+connection (\d+) req (\d+)(?: opcode \d+ \((\w+)\))?"
)
KINDS = ("FUSE_OPEN", "FUSE_READ", "FUSE_FLUSH", "FUSE_RELEASE")


def latencies(script: bytes) -> dict[bytes, dict[str, list[float]]]:
    """perf script output -> connection -> request kind -> microseconds from send to end."""
    sent: dict[tuple[bytes, bytes], tuple[float, str]] = {}
    out: dict[bytes, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in script.splitlines():
        m = LINE.search(line)
        if m is None:
            continue
        t, kind, conn, unique, op = m.groups()
        if kind == b"send":
            sent[(conn, unique)] = (float(t), op.decode() if op else "?")
        else:
            s = sent.pop((conn, unique), None)
            if s is not None:
                out[conn][s[1]].append((float(t) - s[0]) * 1e6)
    return out


def quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    tracepoints = "/sys/kernel/tracing/events/fuse/fuse_request_send"
    if not os.path.exists(tracepoints):
        print(f"this kernel has no FUSE tracepoints ({tracepoints}: Linux 6.16+)", file=sys.stderr)
        return 2
    print(f"N={args.n}, {args.seconds:g} s, one round per daemon; microseconds from a request's send to its reply")
    print(f"{'daemon':<12} {'request':<13} {'count':>7} {'p50':>7} {'p90':>7} {'p99':>7}")
    fleet_lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lxcfs-guard-trace-") as work:
        for kind, name in (("ours", "lxcfs-guard"), ("lxcfs", "LXCFS 5.0.3")):
            data = os.path.join(work, f"{kind}.data")
            fleet = [sys.executable, FLEET, "--n", str(args.n), "--seconds", str(args.seconds)]
            fleet += ["--rounds", "1", "--daemons", kind]
            events = [a for e in EVENTS for a in ("-e", e)]
            run = subprocess.run(
                ["perf", "record", "-q", "-a", *events, "-o", data, "--", *fleet], capture_output=True, text=True
            )
            if run.returncode != 0:
                print(run.stdout + run.stderr, file=sys.stderr)
                return 1
            # fleet.py's own figures for the traced round: its round line and the wait for a CPU
            for line in run.stdout.splitlines():
                if line.startswith("  round 1") or "waiting for a CPU" in line:
                    fleet_lines.append(f"{name:<12} {line.strip()}")
            script = subprocess.run(["perf", "script", "-i", data], capture_output=True, check=True).stdout
            by_conn = latencies(script)
            if not by_conn:
                print(f"{name:<12} no requests traced")
                continue
            # round 0 and round 1 each mount anew: the measured round is the connection that served the most
            busiest = max(by_conn.values(), key=lambda d: sum(len(v) for v in d.values()))
            for op in KINDS:
                v = busiest.get(op, [])
                if v:
                    print(
                        f"{name:<12} {op:<13} {len(v):>7} {quantile(v, 0.5):>7.0f} "
                        f"{quantile(v, 0.9):>7.0f} {quantile(v, 0.99):>7.0f}",
                        flush=True,
                    )
    print("\nbench/fleet.py's own figures for the same rounds (traced):")
    print("\n".join(fleet_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
