"""Benchmark: how long containers go without a working /proc when the daemon fails, under `supervise`.

N light containers (tests/support/readers.py: own mount namespace, own memory cgroup 64+i MiB), each with
a reader looping every 2 ms over its bound /proc/meminfo and checking it reads its own MemTotal. Per fault,
the time from the fault until *every* container reads correctly again (a reader's own clock stamps each
change of outcome), worst and median over the containers, for every round; and the number of failed and
of wrong reads (another container's or the host's values) the readers saw during that fault.

Faults, with and without the hot standby (--standby / --no-standby):
  sigkill  SIGKILL of the serving daemon (`rounds` times in a row)
  sigstop  SIGSTOP of the serving daemon: a hang, found by the probe (interval + timeout), aborted, killed
  reload   SIGHUP to supervise: the zero-downtime restart onto a new daemon

    .venv/bin/python bench/recovery.py                      # 10 containers, 5 rounds, both modes
    .venv/bin/python bench/recovery.py -n 10 --rounds 5 --json
Targets: SIGKILL worst < 300 ms without standby, < 50 ms with it; SIGSTOP < probe interval + timeout + 1 s;
reload: zero failed reads; wrong reads: zero everywhere.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time

from lxcfs_guard.testing.procs import signal_daemon
from lxcfs_guard.testing.readers import Fleet, reader_fleet
from lxcfs_guard.testing.supervise import Supervised, fusectl_restored, kill_and_time, supervised


def one_fault(s: Supervised, fleet: Fleet, fault: str, standby: bool) -> dict:
    st = s.wait_healthy(standby=standby)
    before = fleet.counts()
    if fault == "sigkill":
        t = kill_and_time(st["daemon_pid"])
    elif fault == "sigstop":
        t = kill_and_time(st["daemon_pid"], signal.SIGSTOP)
    else:
        t = kill_and_time(s.proc.pid, signal.SIGHUP)
    try:
        rec = fleet.wait_recovered(t, timeout=30)
        s.wait_healthy(standby=standby, not_pid=st["daemon_pid"])
    finally:
        if fault == "sigstop":
            signal_daemon(st["daemon_pid"], signal.SIGCONT)
    if fault == "reload":  # let the old daemon retire inside the measured window
        time.sleep(1.2)
    after = fleet.counts()
    values = sorted(rec.values())
    return {
        "worst_ms": values[-1],
        "median_ms": statistics.median(values),
        "reads": after[0] - before[0],
        "failed": after[1] - before[1],
        "wrong": after[2] - before[2],
        "supervise_ms": s.status().get("last_recovery_ms"),
    }


def run_mode(standby: bool, n: int, rounds: int, interval: float, probe: tuple[float, float]) -> dict:
    args = [
        "--standby" if standby else "--no-standby",
        "--max-restarts",
        "0",
        "--probe-interval",
        str(probe[0]),
        "--probe-timeout",
        str(probe[1]),
    ]
    out: dict[str, list[dict]] = {"sigkill": [], "sigstop": [], "reload": []}
    with supervised(*args) as s, reader_fleet(n, s.mountpoint, s.state_dir, interval=interval) as fleet:
        for fault in ("sigkill", "sigstop", "reload"):
            for _ in range(rounds if fault != "sigstop" else max(1, rounds // 2)):
                out[fault].append(one_fault(s, fleet, fault, standby))
                time.sleep(0.3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--containers", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--interval", type=float, default=0.002, help="reader loop interval (s)")
    ap.add_argument("--probe-interval", type=float, default=1.0)
    ap.add_argument("--probe-timeout", type=float, default=2.0)
    ap.add_argument("--mode", choices=("both", "standby", "no-standby"), default="both")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    modes = {"both": [False, True], "standby": [True], "no-standby": [False]}[a.mode]
    results = {}
    with fusectl_restored():
        for standby in modes:
            name = "standby" if standby else "no-standby"
            results[name] = run_mode(standby, a.containers, a.rounds, a.interval, (a.probe_interval, a.probe_timeout))
    if a.json:
        print(json.dumps(results, indent=1))
        return 0
    hang_bound = (a.probe_interval + a.probe_timeout + 1.0) * 1000
    targets = {("sigkill", "no-standby"): 300.0, ("sigkill", "standby"): 50.0}
    print(
        f"recovery of {a.containers} containers, readers every {a.interval * 1000:g} ms, "
        f"probe every {a.probe_interval:g} s / timeout {a.probe_timeout:g} s"
    )
    print(
        f"{'mode':<11} {'fault':<8} {'round':>5} {'worst ms':>9} {'median ms':>10} {'supervise ms':>13} "
        f"{'reads':>7} {'failed':>7} {'wrong':>6}"
    )
    for mode, faults in results.items():
        for fault, rows in faults.items():
            for i, r in enumerate(rows, 1):
                sup = r["supervise_ms"]
                print(
                    f"{mode:<11} {fault:<8} {i:>5} {r['worst_ms']:>9.1f} {r['median_ms']:>10.1f} "
                    f"{'-' if sup is None or fault == 'reload' else f'{sup:.1f}':>13} "
                    f"{r['reads']:>7} {r['failed']:>7} {r['wrong']:>6}"
                )
    print()
    for mode, faults in results.items():
        for fault, rows in faults.items():
            worst = max(r["worst_ms"] for r in rows)
            failed = sum(r["failed"] for r in rows)
            wrong = sum(r["wrong"] for r in rows)
            bound = targets.get((fault, mode), hang_bound if fault == "sigstop" else None)
            verdict = []
            if bound is not None:
                verdict.append(f"worst {worst:.1f} ms {'<' if worst < bound else '>='} {bound:.0f} ms target")
            if fault == "reload":
                verdict.append(f"failed reads {failed} ({'OK' if failed == 0 else 'target is 0'})")
            verdict.append(f"wrong reads {wrong}")
            print(f"{mode:<11} {fault:<8} " + "; ".join(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
