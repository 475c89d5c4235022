"""Runs that race: two remounts at once, a namespace that wedges (its path crosses a hung FUSE daemon), a
container that exits while the run is under way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.testing.containers import light_containers, stop
from lxcfs_guard.testing.daemon import LXCFS_GUARD
from lxcfs_guard.testing.procs import signal_daemon
from tests.integration.remount_helpers import actions, assert_exit_code, cli, daemon, our_mounts


def test_two_concurrent_runs_are_serialised_and_never_stack() -> None:
    with daemon() as d, light_containers(10, bind_from=d.mountpoint) as cs:
        pids = {c.pid for c in cs}
        d.kill()
        d.start()
        cmd = [LXCFS_GUARD, "remount", "--all", "--json", "--mountpoint", d.mountpoint, "--state-dir", d.state_dir]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        reports = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
        for p, r in zip(procs, reports, strict=True):
            assert_exit_code(p.returncode, r, pids)
        for pid in pids:  # each container repaired by exactly one run; the other found it live
            assert sorted(actions(r, {pid}).get(pid, "-") for r in reports) == ["already_live", "repaired"], reports
        for c in cs:
            assert len(our_mounts(c, d.fstype)) == 7
            assert c.memtotal_kb() == c.limit // 1024


def _wedge_and_bind(d, hung, w, others) -> None:
    """W gets the (soon hung) daemon's tree at /tmp/h with our meminfo bound inside it, so resolving W's
    target blocks in FUSE once `hung` is stopped; every other container gets a plain meminfo bind."""

    def nest() -> None:
        sc.mount(hung.mountpoint, w.host_path("/tmp/h"), None, sc.MS_BIND)
        sc.mount(d.mountpoint + "/proc/meminfo", w.host_path("/tmp/h/proc/meminfo"), None, sc.MS_BIND)

    os.mkdir(w.host_path("/tmp/h"))
    w.call(nest, chroot=False)
    for c in others:
        c.call(
            lambda c=c: sc.mount(d.mountpoint + "/proc/meminfo", c.host_path("/proc/meminfo"), None, sc.MS_BIND),
            chroot=False,
        )


def test_wedged_namespace_times_out_and_a_container_dying_mid_run_is_reported() -> None:
    """Container W's bind sits under a directory of a second, SIGSTOPped daemon (an LXCFS: its 1 s entry
    timeout makes the path walk ask the daemon again): resolving it blocks in FUSE. The worker stuck there
    is killed at W's deadline and replaced; container X, queued behind W, exits meanwhile and is reported
    gone; Y is repaired all the same. (One worker of one thread, so X is queued behind W.)"""
    with daemon() as d, daemon(lxcfs=True) as hung, light_containers(3, bind_from=None) as (w, x, y):
        _wedge_and_bind(d, hung, w, (x, y))
        old = d.dev
        d.kill()
        d.start()
        signal_daemon(hung.pid, signal.SIGSTOP)
        try:
            time.sleep(1.2)  # let the hung daemon's cached entries expire
            cmd = [
                LXCFS_GUARD,
                "remount",
                "--all",
                "--json",
                "--jobs",
                "1",
                "--threads",
                "1",
                "--timeout",
                "2",
                "--stale-dev",
                f"{os.major(old)}:{os.minor(old)}",
                "--mountpoint",
                d.mountpoint,
                "--state-dir",
                d.state_dir,
            ]
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            time.sleep(1.0)  # the single worker is stuck on W by now (W is first: lowest pid)
            stop(x)
            out = proc.communicate(timeout=30)[0]
            took = time.monotonic() - t0
        finally:
            signal_daemon(hung.pid, signal.SIGCONT)
        report = json.loads(out)
        got = {ns["pid"]: ns for ns in report["namespaces"] if ns["pid"] in (w.pid, x.pid, y.pid)}
        assert proc.returncode == 1 and not report["ok"], got
        assert got[w.pid]["action"] == "failed" and got[w.pid]["errors"][0]["errname"] == "ETIMEDOUT", got
        assert got[x.pid]["action"] == "gone", got
        assert got[y.pid]["action"] == "repaired", got
        assert took < 10, took  # W cost its 2 s deadline, not the whole run
        assert y.memtotal_kb() == y.limit // 1024
        # and W is repaired once its path answers again
        proc = cli(d, "remount", "--all", "--json", "--stale-dev", f"{os.major(old)}:{os.minor(old)}")
        assert actions(json.loads(proc.stdout), {w.pid}) == {w.pid: "repaired"}
        assert [t for t, _, _ in our_mounts(w, d.fstype)] == ["/tmp/h/proc/meminfo"]


def test_with_threads_a_wedged_namespace_holds_up_no_other() -> None:
    with daemon() as d, daemon(lxcfs=True) as hung, light_containers(6) as (w, *others):
        _wedge_and_bind(d, hung, w, others)
        old = d.dev
        d.kill()
        d.start()
        signal_daemon(hung.pid, signal.SIGSTOP)
        try:
            time.sleep(1.2)
            t0 = time.monotonic()
            proc = cli(
                d,
                "remount",
                "--all",
                "--json",
                "--jobs",
                "1",
                "--timeout",
                "1.5",
                "--stale-dev",
                f"{os.major(old)}:{os.minor(old)}",
            )
            took = time.monotonic() - t0
        finally:
            signal_daemon(hung.pid, signal.SIGCONT)
        report = json.loads(proc.stdout)
        got = actions(report, {c.pid for c in (w, *others)})
        assert got == {w.pid: "failed", **{c.pid: "repaired" for c in others}}, report
        (ns,) = [ns for ns in report["namespaces"] if ns["pid"] == w.pid]
        assert ns["errors"][0]["errname"] == "ETIMEDOUT" and took < 5, (ns, took)
        # the others were done long before W's deadline
        assert all(ns["duration_ms"] < 1000 for ns in report["namespaces"] if ns["pid"] in {c.pid for c in others})


def test_probe_tells_dead_from_hung_from_live() -> None:
    from lxcfs_guard.remount import discovery

    with daemon() as live, daemon() as dead, daemon() as hung, light_containers(1) as (c,):

        def bind() -> None:
            for i, dd in enumerate((live, dead, hung)):
                open(c.host_path(f"/tmp/{i}"), "w").close()
                sc.mount(dd.mountpoint + "/proc/uptime", c.host_path(f"/tmp/{i}"), None, sc.MS_BIND)

        c.call(bind, chroot=False)
        devs = [live.dev, dead.dev, hung.dev]
        dead.kill()
        proc_fd = discovery.open_proc()
        signal_daemon(hung.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            states = discovery.probe({dev: (c.pid, f"/tmp/{i}") for i, dev in enumerate(devs)}, proc_fd, timeout=0.5)
            took = time.monotonic() - t0
        finally:
            signal_daemon(hung.pid, signal.SIGCONT)
            os.close(proc_fd)
        assert states == {devs[0]: discovery.LIVE, devs[1]: discovery.DEAD, devs[2]: discovery.HUNG}
        assert took < 0.5  # the hung one is seen waiting in its daemon, not waited for
