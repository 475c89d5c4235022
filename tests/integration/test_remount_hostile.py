"""What a container or a hung daemon can do to `remount` and `list` (issue 11 H2, L2, L3; issue 10.5): a
container's own FUSE mount of our type that claims to be dead, one whose daemon reads our statfs and never
answers (the caller then sleeps uninterruptibly), our own daemon SIGSTOPped, a target name that is not
UTF-8 under a strict stdout. Real mounts: the stub daemon (tests.support.stub_fuse) mounts with
`subtype=lxcfs-guard`, so its fstype is ours; its connection is aborted through fusectl at teardown."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time

from lxcfs_guard.kernel import syscalls as sc
from lxcfs_guard.testing.containers import light_containers
from lxcfs_guard.testing.daemon import LXCFS_GUARD
from lxcfs_guard.testing.procs import signal_daemon
from tests.integration.remount_helpers import actions, cli, daemon, our_mounts, remount_json
from tests.support import stub_fuse


def _state(pid: int) -> str:
    """ "D" if a thread of `pid` is in uninterruptible sleep, else the one-letter state of its leader."""
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        states.append(data[data.rindex(b")") + 2 :][:1].decode())
    return "D" if "D" in states else states[0] if states else ""


def _dev(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _fake_bind(c, top: str) -> None:
    """Container `c` gets the stub's proc/meminfo bound on its /tmp/fake (and nothing else of it)."""
    os.mkdir(c.host_path("/tmp/stub"))
    open(c.host_path("/tmp/fake"), "w").close()
    stub_fuse.give(c, top, "/tmp/stub", bind=("proc/meminfo", "/tmp/fake"), keep=False)


def test_a_containers_fake_dead_mount_of_our_type_is_left_alone() -> None:
    """L2: the stub answers statfs with ENOTCONN, as a dead connection would; its device was never ours
    (not recorded in the state dir), so `remount --all` repairs the container's real binds and leaves the
    fake one as it is, with a warning naming the device."""
    with (
        daemon() as d,
        light_containers(1, bind_from=d.mountpoint) as (c,),
        stub_fuse.running(statfs_errno=errno.ENOTCONN) as (top, dev),
    ):
        _fake_bind(c, top)
        d.kill()
        d.start()
        rc, report = remount_json(d, "--all")
        assert actions(report, {c.pid}) == {c.pid: "repaired"}, report
        (ns,) = [ns for ns in report["namespaces"] if ns["pid"] == c.pid]
        assert "/tmp/fake" not in ns["repaired"] and len(ns["repaired"]) == 7, ns
        assert ("/tmp/fake", _dev(dev)) in [(t, dv) for t, dv, _ in our_mounts(c, d.fstype)]
        assert any(_dev(dev) in w and "not recorded as ours" in w for w in report["warnings"]), report
        assert rc == 0 and report["ok"], report
        assert c.memtotal_kb() == c.limit // 1024


def test_a_wedged_daemon_of_our_type_holds_up_neither_the_run_nor_the_lock() -> None:
    """H2 (b): the stub reads a statfs and never answers it, so a caller sleeps uninterruptibly until the
    connection is aborted. By default its device is not ours and is never asked; with --any-device it is
    asked, from a child that then cannot die: the child is left behind (the run returns), it does not
    hold the remount lock (the next run starts at once), and the other binds are repaired."""
    with (
        daemon() as d,
        light_containers(2, bind_from=d.mountpoint) as (c, other),
        stub_fuse.running(hang="statfs") as (top, dev),
    ):
        _fake_bind(c, top)
        pids = {c.pid, other.pid}
        d.kill()
        d.start()
        t0 = time.monotonic()
        proc = cli(d, "remount", "--all", "--json", "--timeout", "3", timeout=15)
        assert time.monotonic() - t0 < 15
        report = json.loads(proc.stdout)
        assert proc.returncode == 0 and actions(report, pids) == {p: "repaired" for p in pids}, report

        d.kill()
        d.start()
        stuck: list[int] = []
        for attempt in range(3):  # the probe is judged held as soon as it blocks; on a loaded host the stub
            t0 = time.monotonic()  # may not have read it yet (then it dies at once): ask again
            proc = cli(d, "remount", "--all", "--json", "--timeout", "3", "--any-device", timeout=15)
            took = time.monotonic() - t0
            report = json.loads(proc.stdout)
            assert took < 15, took
            if attempt == 0:
                assert actions(report, pids) == {p: "repaired" for p in pids}, report
            assert any(_dev(dev) in w and ("hung" in w or "stuck" in w) for w in report["warnings"]), report
            stuck = report["left_behind"]
            assert all(_state(pid) == "D" for pid in stuck), (stuck, report)
            if stuck:
                break
        assert stuck, "no probe child ever got stuck on the stub"

        t0 = time.monotonic()
        rc, report = remount_json(d, "--all")
        assert time.monotonic() - t0 < 5 and report["error"] is None and rc == 0, report
        assert all(_state(pid) == "D" for pid in stuck)  # still wedged: the lock was not theirs


def test_with_serve_stopped_every_command_answers_within_5_s_naming_the_mount() -> None:
    """10.5: a SIGSTOPped serve never answers; `list`, `list --json`, `remount --all --dry-run` and
    `remount --all` each say which mount does not answer, within 5 s, and `remount` does nothing."""
    with daemon() as d, light_containers(2, bind_from=d.mountpoint) as cs:
        before = {c.pid: our_mounts(c, d.fstype) for c in cs}
        signal_daemon(d.pid, signal.SIGSTOP)  # the holder and every worker: a hang of the whole daemon
        try:
            for args in (
                ["list"],
                ["list", "--json"],
                ["remount", "--all", "--dry-run"],
                ["remount", "--all"],
                ["remount", "--all", "--json"],
            ):
                t0 = time.monotonic()
                proc = cli(d, *args, timeout=30)
                took = time.monotonic() - t0
                out = proc.stdout + proc.stderr
                assert took < 5, (args, took)
                assert d.mountpoint in out and "does not answer" in out, (args, out)
                assert "Traceback" not in proc.stderr, (args, proc.stderr)
                assert proc.returncode == (0 if args[0] == "list" else 1), (args, out)
        finally:
            signal_daemon(d.pid, signal.SIGCONT)
        assert {c.pid: our_mounts(c, d.fstype) for c in cs} == before
        assert all(c.memtotal_kb() == c.limit // 1024 for c in cs)


def test_a_non_utf8_target_name_is_escaped_under_a_strict_stdout() -> None:
    """L3: a stale directory bind named b"/tmp/\\xff" with a mount inside it is refused; the text report
    names it, escaped, and does not crash when stdout is ASCII-strict."""
    name = b"/tmp/\xff"
    with daemon() as d, light_containers(1) as (c,):
        path = c.host_path("/tmp").encode() + name[4:]
        os.mkdir(path)

        def bind() -> None:  # (by cwd: the name cannot go through a str path)
            os.chdir(path)
            sc.mount(d.mountpoint, ".", None, sc.MS_BIND)
            os.chdir(path)  # now on the bind
            sc.mount("tmpfs", "proc", "tmpfs", 0)

        c.call(bind, chroot=False)
        d.kill()
        d.start()
        env = {**os.environ, "PYTHONIOENCODING": "ascii:strict"}
        cmd = [LXCFS_GUARD, "remount", "--all", "--mountpoint", d.mountpoint, "--state-dir", d.state_dir]
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=60)
        out, err = proc.stdout.decode("ascii"), proc.stderr.decode(errors="replace")
        assert "Traceback" not in err and proc.returncode == 1, (out, err)
        assert "/tmp/\\xff: EBUSY" in out, out


def _writer_holding_the_inode_lock(path: str, stub_file: str) -> int:
    """A process that write()s to `path` from a buffer mmapped from `stub_file`, a file of a daemon that
    never answers a read: the write takes `path`'s inode lock, then faults on the buffer and waits for the
    daemon, holding the lock until the connection is aborted. Returns its pid once it is stuck (D state)."""
    import mmap

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            src = os.open(stub_file, os.O_RDONLY)
            buf = mmap.mmap(src, 1 << 16, prot=mmap.PROT_READ)
            dst = os.open(path, os.O_WRONLY)
            os.write(w, b"x")
            os.write(dst, buf)  # the fault happens with dst's inode lock held
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    deadline = time.monotonic() + 10
    while _state(pid) != "D":
        assert time.monotonic() < deadline, "the writer never got stuck"
        time.sleep(0.01)
    return pid


def test_a_move_mount_blocked_on_an_inode_lock_a_container_holds_is_left_behind() -> None:
    """H2 (a): a container holds the inode lock of the file under its own extra bind of our meminfo (a
    write from a buffer mmapped from a never-answering FUSE file). Repairing that bind means move_mount
    beneath it, which waits for that lock, uninterruptibly: the worker is killed at the deadline, cannot
    die and is left behind; the run returns, the other container is repaired, the next run does not wait
    for the lock. Once the connection is aborted, a run repairs the bind, nothing stacked."""
    with daemon() as d, light_containers(2, bind_from=d.mountpoint) as (c, other):
        pids = {c.pid, other.pid}
        open(c.host_path("/tmp/f"), "w").close()
        c.call(lambda: sc.mount(d.mountpoint + "/proc/meminfo", c.host_path("/tmp/f"), None, sc.MS_BIND), chroot=False)
        writer = 0
        try:
            with stub_fuse.running(hang="read") as (top, _):
                writer = _writer_holding_the_inode_lock(c.host_path("/tmp/f"), top + "/big")
                sc.umount2(top, sc.MNT_DETACH)  # the writer's mmap keeps the stub's file; nothing on the host
                d.kill()
                d.start()
                t0 = time.monotonic()
                proc = cli(d, "remount", "--all", "--json", "--timeout", "3", "--jobs", "1", timeout=15)
                took = time.monotonic() - t0
                assert proc.stdout, proc.stderr
                report = json.loads(proc.stdout)
                assert took < 15 and proc.returncode == 1, (took, report)
                assert actions(report, pids) == {c.pid: "failed", other.pid: "repaired"}, report
                (ns,) = [ns for ns in report["namespaces"] if ns["pid"] == c.pid]
                assert ns["errors"][0]["errname"] == "ETIMEDOUT" and "left behind" in ns["errors"][0]["message"]
                stuck = report["left_behind"]
                assert stuck and all(_state(pid) == "D" for pid in stuck), report
                t0 = time.monotonic()
                proc = cli(d, "remount", "--all", "--json", "--timeout", "1", timeout=15)
                assert time.monotonic() - t0 < 10 and json.loads(proc.stdout)["error"] is None, proc.stdout
        finally:
            if writer:
                os.kill(writer, signal.SIGKILL)
                os.waitpid(writer, 0)
        # the connection is aborted: the lock is free; whatever the stuck worker finished, a run completes it
        time.sleep(0.2)
        rc, report = remount_json(d, "--all")
        assert rc == 0 and actions(report, {c.pid}).get(c.pid, "already_live") in ("repaired", "already_live")
        assert [t for t, _, _ in our_mounts(c, d.fstype)].count("/tmp/f") == 1
        assert c.read("/tmp/f")[0] == 0
