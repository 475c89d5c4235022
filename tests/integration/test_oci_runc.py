"""The OCI hook in real runc containers served by a real `lxcfs-guard supervise`.

Each container's config is `runc spec` plus the shipped deploy/runc/config-snippet.json (the binary's path
swapped for this checkout's, --mountpoint/--state-dir appended): nothing else binds anything.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxcfs_guard.config import DEFAULT_BINDS, FSTYPE, target_for
from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.testing.procs import wait_for
from lxcfs_guard.testing.supervise import BINARY, Supervised, supervised
from tests.support.runc import Container, container

REPO = Path(__file__).resolve().parents[2]
MEMTOTAL_64M = ["MemTotal:", "65536", "kB"]


@pytest.fixture(scope="module")
def guard() -> Iterator[Supervised]:
    with supervised() as g:
        yield g


def our_mounts(c: Container) -> dict[str, list]:
    """target -> our FUSE mounts stacked there, from the container's own mount table."""
    out: dict[str, list] = {}
    for m in read_mountinfo(c.pid):
        if m.fstype == FSTYPE:
            out.setdefault(m.mount_point, []).append(m)
    return out


def first_line(text: str) -> list[str]:
    return text.splitlines()[0].split()


def test_container_sees_its_limits_and_is_listed_until_deleted(guard: Supervised) -> None:
    with container(memory=64 << 20, cpus="0", hooks=guard.hooks()) as c:
        assert first_line(c.read("/proc/meminfo")) == MEMTOTAL_64M
        cpuinfo = c.read("/proc/cpuinfo")
        assert sum(line.startswith("processor") for line in cpuinfo.splitlines()) == 1
        assert c.read("/sys/devices/system/cpu/online").strip() == "0"
        mounts = our_mounts(c)
        assert sorted(mounts) == sorted(target_for(s) for s in DEFAULT_BINDS)
        assert all(len(v) == 1 for v in mounts.values()), mounts
        listed = guard.listed()
        assert c.id in listed, listed
        entry = json.loads(Path(guard.state_dir, "registry.json").read_text())["containers"][c.id]
        assert entry["pid"] == c.pid
        assert sorted(b["target"] for b in entry["binds"]) == sorted(mounts)
        deleted = c.delete()
        assert deleted.returncode == 0, deleted.stderr
        assert c.id not in guard.listed()
        assert c.id not in json.loads(Path(guard.state_dir, "registry.json").read_text())["containers"]


class LineReader:
    """The container's stdout, each line stamped with time.monotonic() as it arrives."""

    def __init__(self, fd: int) -> None:
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, args=(fd,), daemon=True)
        self.thread.start()

    def _run(self, fd: int) -> None:
        with open(fd, "rb", buffering=0) as raw, io.BufferedReader(raw) as f:
            for line in f:
                with self.lock:
                    self.lines.append((time.monotonic(), line.decode(errors="replace").strip()))

    def since(self, t: float) -> list[tuple[float, str]]:
        with self.lock:
            return [x for x in self.lines if x[0] >= t]


@pytest.fixture(scope="module")
def cold_guard() -> Iterator[Supervised]:
    """supervise without its hot standby: after a crash it must start a new daemon from scratch."""
    with supervised("--no-standby") as g:
        yield g


@pytest.mark.parametrize("which", ["standby", "cold"])
def test_container_recovers_by_itself_after_sigkill_of_the_daemon(which: str, request: pytest.FixtureRequest) -> None:
    guard: Supervised = request.getfixturevalue("guard" if which == "standby" else "cold_guard")
    reader_sh = "while :; do head -1 /proc/meminfo 2>&1; usleep 10000; done"
    r, w = os.pipe()
    with container(memory=64 << 20, cpus="0", hooks=guard.hooks(), args=("sh", "-c", reader_sh), start=False) as c:
        try:
            c.run(stdout=w)
        finally:
            os.close(w)
        reader = LineReader(r)
        wait_for(lambda: any(x.split() == MEMTOTAL_64M for _, x in reader.since(0)), 10, what="first reads")
        victim = guard.daemon_pid()
        assert victim
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def settled() -> bool:  # 200 ms of correct reads, all after some read that came after the kill
            seen = reader.since(t_kill)
            return (
                bool(seen)
                and seen[-1][0] - t_kill > 0.2
                and all(x.split() == MEMTOTAL_64M for ts, x in seen if ts >= seen[-1][0] - 0.2)
            )

        wait_for(settled, 15, what="the container to read its own MemTotal again")
        seen = reader.since(t_kill)
        bad = [(ts, x) for ts, x in seen if x.split() != MEMTOTAL_64M]
        last_bad = bad[-1][0] - t_kill if bad else 0.0
        assert last_bad < 1.0, f"container read wrong values for {last_bad:.3f} s after SIGKILL: {bad[:3]}"
        # Failed reads only (ENOTCONN once the connection is gone; ECONNABORTED or EIO for a read in flight at
        # the kill), never someone else's numbers.
        for err in {x for _, x in bad}:
            assert err.startswith("head: /proc/meminfo: ") and "MemTotal" not in err, err
        wait_for(lambda: guard.daemon_pid() not in (None, victim), 10, what="status.json to name the new daemon")
        assert c.id in guard.listed()
        assert all(len(v) == 1 for v in our_mounts(c).values()), "repair must not stack mounts"
        print(f"\nrecovery ({which}): {len(bad)} failed reads, last at +{last_bad * 1000:.0f} ms after SIGKILL")


def drop_sysfs(c: Container) -> None:
    c.config["mounts"] = [m for m in c.config["mounts"] if not m["destination"].startswith("/sys")]


def test_rootfs_lacking_some_targets(guard: Supervised) -> None:
    """No /sys in the container: cpu/online is skipped, the /proc files are bound, the start succeeds
    (strict mode too: an absent target is not a failure)."""
    with container(hooks=guard.hooks(["--strict"]), customize=drop_sysfs, remove=["sys"]) as c:
        assert first_line(c.read("/proc/meminfo")) == MEMTOTAL_64M
        assert c.exec("cat", "/sys/devices/system/cpu/online", check=False).returncode != 0
        mounts = our_mounts(c)
        assert "/sys/devices/system/cpu/online" not in mounts
        assert sorted(mounts) == sorted(target_for(s) for s in DEFAULT_BINDS if s.startswith("proc/"))
        entry = json.loads(Path(guard.state_dir, "registry.json").read_text())["containers"][c.id]
        assert sorted(b["target"] for b in entry["binds"]) == sorted(mounts)


def plant_symlink(c: Container) -> None:
    """No sysfs, and the image has a symlink where cpu/online would be: binding over it would let the image
    choose where our mount lands."""
    drop_sysfs(c)
    os.makedirs(c.rootfs + "/sys/devices/system/cpu", exist_ok=True)
    os.symlink("/etc/passwd", c.rootfs + "/sys/devices/system/cpu/online")


def test_symlinked_target_is_refused_lenient_binds_the_rest(guard: Supervised) -> None:
    with container(hooks=guard.hooks(), customize=plant_symlink, remove=["sys"]) as c:
        mounts = our_mounts(c)
        assert "/sys/devices/system/cpu/online" not in mounts
        assert len(mounts) == 7 and first_line(c.read("/proc/meminfo")) == MEMTOTAL_64M
        assert c.read("/etc/passwd").startswith("root:")  # the symlink's target untouched
        entry = json.loads(Path(guard.state_dir, "registry.json").read_text())["containers"][c.id]
        assert sorted(b["target"] for b in entry["binds"]) == sorted(mounts)


def test_symlinked_target_fails_the_start_in_strict_mode(guard: Supervised) -> None:
    with container(
        hooks=guard.hooks(),
        customize=plant_symlink,
        remove=["sys"],
        annotations={"io.lxcfs-guard.strict": "true"},
        start=False,
    ) as c:
        with pytest.raises(RuntimeError) as exc:
            c.run()
        msg = str(exc.value)
        assert "/sys/devices/system/cpu/online" in msg and "symlink" in msg and "strict mode" in msg, msg
        assert c.id not in guard.listed()  # runc ran poststop when it gave up on the container


def test_hook_twice_and_again_by_hand_is_idempotent(guard: Supervised) -> None:
    hooks = guard.hooks()
    hooks["createRuntime"] = hooks["createRuntime"] * 2
    with container(hooks=hooks) as c:
        mounts = our_mounts(c)
        assert len(mounts) == len(DEFAULT_BINDS) and all(len(v) == 1 for v in mounts.values()), mounts
        state = {"ociVersion": "1.0.2", "id": c.id, "status": "running", "pid": c.pid, "bundle": c.bundle}
        p = subprocess.run(
            [BINARY, "oci-hook", "--mountpoint", guard.mountpoint, "--state-dir", guard.state_dir],
            input=json.dumps(state).encode(),
            capture_output=True,
            timeout=30,
            env={**os.environ, "LXCFS_GUARD_HOOK_VERBOSE": "1"},
        )
        assert p.returncode == 0, p.stderr
        assert b"bound 0 of 8 files" in p.stderr, p.stderr
        assert our_mounts(c).keys() == mounts.keys() and all(len(v) == 1 for v in our_mounts(c).values())
        assert list(guard.listed()).count(c.id) == 1
        assert first_line(c.read("/proc/meminfo")) == MEMTOTAL_64M


def test_hook_binds_fast(guard: Supervised) -> None:
    """The whole hook process (interpreter start-up included) binding 8 files into a running container and
    registering it, over three containers. CPU time (user+sys of the hook and the workers it forks and
    reaps, from wait4) beyond what the same interpreter spends only importing the hook, measured in the same
    run (30-60 ms, by machine), must stay under 70 ms: that is the hook's own work. Wall time is printed and
    only bounded loosely, because this machine's two cores are shared with other test runs."""
    start_up = []
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", "import lxcfs_guard.cli, lxcfs_guard.oci.hook"])
        _, status, usage = os.wait4(p.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        start_up.append(usage.ru_utime + usage.ru_stime)
    walls, cpus = [], []
    for _ in range(3):
        with container() as c:
            state = {"id": c.id, "status": "running", "pid": c.pid, "bundle": c.bundle}
            t = time.monotonic()
            p = subprocess.Popen(
                [BINARY, "oci-hook", "--strict", "--mountpoint", guard.mountpoint, "--state-dir", guard.state_dir],
                stdin=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            p.stdin.write(json.dumps(state).encode())
            p.stdin.close()
            err = p.stderr.read()
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            p.stderr.close()
            walls.append(time.monotonic() - t)
            cpus.append(usage.ru_utime + usage.ru_stime)
            assert p.returncode == 0, err
            assert first_line(c.read("/proc/meminfo")) == MEMTOTAL_64M
            c.delete()
            subprocess.run(
                [BINARY, "oci-hook", "--state-dir", guard.state_dir],
                input=json.dumps({**state, "status": "stopped"}).encode(),
                capture_output=True,
            )
    print(
        f"\nhook (bind 8 files + register): wall {', '.join(f'{t * 1000:.0f}' for t in walls)} ms; "
        f"cpu {', '.join(f'{t * 1000:.0f}' for t in cpus)} ms; import only {min(start_up) * 1000:.0f} ms"
    )
    assert min(cpus) - min(start_up) < 0.07, (cpus, start_up)
    assert min(walls) < 0.25, walls


def test_opt_out_annotation_leaves_the_container_alone(guard: Supervised) -> None:
    with container(hooks=guard.hooks(), annotations={"io.lxcfs-guard.enable": "false"}) as c:
        assert first_line(c.read("/proc/meminfo")) != MEMTOTAL_64M
        assert our_mounts(c) == {} and c.id not in guard.listed()


def test_files_annotation_binds_only_those(guard: Supervised) -> None:
    with container(hooks=guard.hooks(), annotations={"io.lxcfs-guard.files": "meminfo,cpuinfo"}) as c:
        assert sorted(our_mounts(c)) == ["/proc/cpuinfo", "/proc/meminfo"]
        assert first_line(c.read("/proc/meminfo")) == MEMTOTAL_64M


def test_busybox_cat_sees_the_files(guard: Supervised) -> None:
    """busybox `cat` copies with sendfile(2), which goes through the page cache and stops at i_size; plain
    read(2) does not. Images built on busybox (the article's example) read /proc this way."""
    with container(hooks=guard.hooks()) as c:
        assert first_line(c.exec("cat", "/proc/meminfo").stdout) == MEMTOTAL_64M


@pytest.mark.parametrize("strict", [False, True])
def test_hook_gives_up_by_its_deadline_while_a_repair_holds_the_lock(guard: Supervised, strict: bool) -> None:
    """A runtime kills a hook that outlives its timeout, which fails the start even in lenient mode: the
    hook must give up first, on its own, and then follow its mode."""
    import fcntl

    with container() as c:
        fd = os.open(os.path.join(guard.state_dir, "remount.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = {"id": c.id, "status": "running", "pid": c.pid, "bundle": c.bundle}
            t = time.monotonic()
            p = subprocess.run(
                [
                    BINARY,
                    "oci-hook",
                    "--mountpoint",
                    guard.mountpoint,
                    "--state-dir",
                    guard.state_dir,
                    *(["--strict"] if strict else []),
                ],
                input=json.dumps(state).encode(),
                capture_output=True,
                timeout=30,
                env={**os.environ, "LXCFS_GUARD_HOOK_DEADLINE": "0.5"},
            )
            took = time.monotonic() - t
        finally:
            os.close(fd)
        assert p.returncode == (1 if strict else 0), p.stderr
        assert b"deadline" in p.stderr and b"Traceback" not in p.stderr, p.stderr
        assert took < 3, took
        assert our_mounts(c) == {}
