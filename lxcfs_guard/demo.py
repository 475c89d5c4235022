"""`make demo`: the whole story in one command, on this machine, with real parts.

1. start `lxcfs-guard supervise` (the watchdog, which starts the FUSE daemon) on a private mountpoint;
2. run a real runc container (busybox, 64 MiB, cpuset 0) whose config adds only the OCI hook;
3. show what the container sees beside the host;
4. SIGKILL one of the daemon's serving workers while the container reads /proc/meminfo every 10 ms: the
   daemon's holder replaces it and the kernel resends what it had in hand, so no read fails;
5. SIGKILL the FUSE daemon itself (the holder of the connection), and show the container recovering by
   itself (nobody touches the container), with the gap measured from the container's own reads;
6. clean up everything it made: container, mount, state, processes (by pid).

Everything lives under a fresh temporary directory, so it does not disturb an installed lxcfs-guard.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from lxcfs_guard.kernel.procfs import mounts_at
from lxcfs_guard.oci import runc
from lxcfs_guard.testing.procs import wait_for
from lxcfs_guard.testing.supervise import BINARY, Supervised, supervised
from lxcfs_guard.watchdog.status import serve_workers

MEMORY = 64 * runc.MiB
READER = "while :; do head -1 /proc/meminfo 2>&1; usleep 10000; done"
WIDTH = 74


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, text: str) -> None:
    say(f"\n[{n}/6] {text}")


def mount_fstype(path: str) -> str | None:
    """The type of the topmost mount on `path`, None if nothing is mounted there."""
    mounts = mounts_at(path)
    return mounts[-1].fstype if mounts else None


@dataclass
class Reader:
    """Time-stamps each line the container prints (its own reads of /proc/meminfo) as it arrives."""

    fd: int
    lines: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with open(self.fd, "rb", buffering=0) as raw, io.BufferedReader(raw) as f:
            for line in f:
                with self.lock:
                    self.lines.append((time.monotonic(), line.decode(errors="replace").strip()))

    def since(self, t: float) -> list[tuple[float, str]]:
        with self.lock:
            return [(ts, line) for ts, line in self.lines if ts >= t]


def _last_server(workers: list[dict]) -> int:
    """The worker that ran the most in the next 0.3 s (its CPU time, /proc/PID/schedstat): with one container
    reading, the one serving those reads, so its death is the one a reader could see."""

    def ran_ns(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return -1

    before = {w["pid"]: ran_ns(w["pid"]) for w in workers}
    time.sleep(0.3)
    return max(workers, key=lambda w: ran_ns(w["pid"]) - before[w["pid"]])["pid"]


def kill_a_worker(sup: Supervised, reader: Reader) -> None:
    """Kill one worker of the serving daemon and show what the container saw meanwhile: every read right."""
    state, holder = sup.state_dir, sup.daemon_pid()
    workers = serve_workers(state, holder).get("workers") or []
    if not workers:
        raise RuntimeError("the FUSE daemon reports no workers")
    say(
        f"      daemon pid {holder} holds the FUSE connection; {len(workers)} worker"
        f"{'s' if len(workers) != 1 else ''} serve it (pids {' '.join(str(w['pid']) for w in workers)})"
    )
    wait_for(lambda: any("MemTotal" in x for _, x in reader.since(0)), 10, what="the container's reads")
    victim = _last_server(workers)
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replaced: list[dict] = []

    def replacement() -> bool:
        replaced[:] = [w for w in serve_workers(state, holder).get("workers") or [] if w["pid"] != victim]
        return len(replaced) == len(workers)

    wait_for(replacement, 10, what="the daemon to replace its worker")
    took = (time.monotonic() - t_kill) * 1000
    time.sleep(0.3)
    seen = reader.since(t_kill)
    bad = [x for _, x in seen if "65536 kB" not in x]
    new = next(w["pid"] for w in replaced if w["pid"] not in {x["pid"] for x in workers})
    say(
        f"      killed the worker serving the reads, pid {victim} (kill -9); replaced by pid "
        f"{new} within {took:.0f} ms, same mount"
    )
    if bad:
        say(f"      inside, {len(bad)} of {len(seen)} reads failed:  {bad[0]}")
        raise RuntimeError("a worker's death was seen inside the container")
    say(f"      inside, {len(seen)} reads since the kill, none failed:  {seen[-1][1] if seen else '-'}")


def kib(line: str) -> str:
    """'MemTotal:   65536 kB' -> '65536 kB'."""
    parts = line.split()
    return " ".join(parts[1:3]) if len(parts) >= 3 else line


def lines(text: str) -> list[str]:
    return text.splitlines()


def table(rows: list[tuple[str, str, str]]) -> None:
    say(f"      {'':<22}{'host':>18}   {'container':>18}")
    for what, host, ctr in rows:
        say(f"      {what:<22}{host:>18}   {ctr:>18}")


def host_and_container(c: runc.Container) -> list[tuple[str, str, str]]:
    def host(path: str) -> str:
        with open(path) as f:
            return f.read()

    def ctr(path: str) -> str:
        return c.read(path)

    rows = []
    for label, path, pick in (
        ("MemTotal", "/proc/meminfo", lambda t: kib(t.splitlines()[0])),
        ("MemAvailable", "/proc/meminfo", lambda t: kib(next(x for x in t.splitlines() if x.startswith("MemAvail")))),
        ("processors (cpuinfo)", "/proc/cpuinfo", lambda t: str(sum(x.startswith("processor") for x in lines(t)))),
        ("cpu lines (stat)", "/proc/stat", lambda t: str(sum(x[:3] == "cpu" and x[3:4].isdigit() for x in lines(t)))),
        ("cpu/online", "/sys/devices/system/cpu/online", lambda t: t.strip()),
        ("uptime", "/proc/uptime", lambda t: f"{float(t.split()[0]):.0f} s"),
    ):
        rows.append((label, pick(host(path)), pick(ctr(path))))
    return rows


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "the demo mounts a filesystem and runs runc: run it as root (sudo make demo)"
    if not os.access(BINARY, os.X_OK):
        return f"{BINARY} is missing: run `make setup`"
    if not os.path.exists(runc.RUNC):
        return "runc is missing: run `make setup` (installs runc and busybox-static)"
    if not os.access(runc.BUSYBOX, os.X_OK):
        return "busybox-static is missing: run `make setup`"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: this kernel or container has no FUSE"
    return None


def main() -> int:
    problem = preflight()
    if problem:
        say(f"lxcfs-guard demo: {problem}")
        return 2
    t_start = time.monotonic()
    say("lxcfs-guard demo: a container's /proc that tells the truth, and survives its daemon being killed")
    say("=" * WIDTH)
    gap_ms = 0.0
    try:
        with supervised(start=False, prefix="lxcfs-guard-demo-", show_log=False) as sup:
            mnt, state = sup.mountpoint, sup.state_dir
            step(1, f"start `lxcfs-guard supervise` (watchdog + FUSE daemon) on {mnt}")
            sup.start()
            try:
                sup.wait_healthy()
            except (RuntimeError, TimeoutError) as e:
                raise RuntimeError(f"supervise did not come up: {e}\n{sup.log()[-3000:]}") from None
            took = time.monotonic() - t_start
            say(
                f"      mounted ({mount_fstype(mnt)}) in {took:.2f} s; FUSE daemon pid {sup.daemon_pid()}, "
                f"supervisor pid {sup.proc.pid if sup.proc else '?'}"
            )

            hooks = runc.guard_hooks(BINARY, ["--mountpoint", mnt, "--state-dir", state])
            r, w = os.pipe()
            with runc.container(
                memory=MEMORY, cpus="0", args=("sh", "-c", READER), hooks=hooks, start=False, prefix="lxcfs-guard-demo"
            ) as c:
                step(2, f"run a runc container {c.id}")
                say("      busybox rootfs, memory limit 64 MiB, cpuset 0; its config.json only adds the OCI hook")
                say("      (createRuntime: `lxcfs-guard oci-hook` binds the files; poststop: forgets it)")
                t = time.monotonic()
                try:
                    c.run(stdout=w)
                finally:
                    os.close(w)
                reader = Reader(r)
                reader.start()
                say(f"      started in {time.monotonic() - t:.2f} s (pid {c.pid})")

                step(3, "what the container sees, beside the host")
                table(host_and_container(c))
                say("\n      `lxcfs-guard list`:")
                listing = sup.cli("list")
                for line in (listing.stdout or listing.stderr).rstrip().splitlines():
                    say(f"      | {line}")

                step(4, "SIGKILL a serving worker of the daemon; the container reads /proc/meminfo every 10 ms")
                kill_a_worker(sup, reader)

                step(5, "SIGKILL the FUSE daemon; the container keeps reading /proc/meminfo every 10 ms")
                victim = sup.daemon_pid()
                if victim is None:
                    raise RuntimeError("could not find the FUSE daemon under supervise")
                wait_for(lambda: any("MemTotal" in x for _, x in reader.since(0)), 10, what="the container's reads")
                t_kill = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                say(f"      killed pid {victim} (kill -9); nobody touches the container from here on")
                expected = "65536 kB"

                wait_for(lambda: sup.daemon_pid() not in (None, victim), 30, what="supervise to replace the daemon")
                t_switch = time.monotonic()

                def settled() -> bool:  # 200 ms of correct reads, all after supervise named the new daemon
                    seen = reader.since(t_switch)
                    return (
                        bool(seen)
                        and seen[-1][0] - t_switch > 0.2
                        and all(expected in x for ts, x in seen if ts >= seen[-1][0] - 0.2)
                    )

                wait_for(settled, 30, what="the container to read its own MemTotal again")
                seen = reader.since(t_kill)
                failed = [i for i, (_, x) in enumerate(seen) if expected not in x]
                st = sup.status()
                repair = st.get("last_repair") or {}
                if failed:
                    back = next(i for i in range(failed[-1], len(seen)) if expected in seen[i][1])
                    gap_ms = (seen[back][0] - t_kill) * 1000
                    n = len(failed)
                    say(f"      inside, {n} read{'s' if n != 1 else ''} failed:  {seen[failed[0]][1]}")
                    say(f"      then, with no one acting:  {seen[back][1]}")
                else:
                    gap_ms = 0.0
                    say(f"      inside, no read failed: the switch fell between two reads; they go on:  {seen[0][1]}")
                say(
                    f"      supervise: daemon pid {st.get('daemon_pid')} took over"
                    + (f", container binds repaired in {repair['ms']:.0f} ms" if repair.get("ms") is not None else "")
                )
                say(
                    f"      recovery gap seen inside the container: {gap_ms:.0f} ms from SIGKILL to a correct read"
                    + ("" if failed else " (reads are 10 ms apart)")
                )
                say(
                    "      (with a plain LXCFS setup it would read 'Transport endpoint is not connected' until "
                    "restarted)"
                )
                check = c.read("/proc/meminfo").splitlines()[0]
                say(f"      `runc exec {c.id} head -1 /proc/meminfo`:  {check}")

                step(6, "clean up")
                deleted = c.delete()
                if deleted.returncode != 0:
                    raise RuntimeError(f"runc delete failed: {deleted.stderr}")
                after = sup.cli("list", "--json")
                still = c.id in after.stdout
                say(f"      container deleted; poststop hook {'did NOT unregister it' if still else 'unregistered it'}")
                if still:
                    raise RuntimeError("the container is still registered after runc delete")
        say(f"      supervise and its daemon stopped (by pid); mount {'gone' if mount_fstype(mnt) is None else 'LEFT'}")
        if gap_ms > 1000:
            say(f"\nFAILED: recovery took {gap_ms:.0f} ms (> 1 s)")
            return 1
        say("=" * WIDTH)
        say(
            f"done in {time.monotonic() - t_start:.1f} s. recovery gap {gap_ms:.0f} ms; "
            "the container was never restarted or touched."
        )
        return 0
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
        say(f"\nFAILED: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
