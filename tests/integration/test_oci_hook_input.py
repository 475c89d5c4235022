"""The hook as runtimes run it (a real process, real stdin), on input it cannot act on, and inside real runc
containers when no daemon serves the mountpoint: lenient by default, a clear refusal in strict mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.runc import container, guard_hooks

REPO = Path(__file__).resolve().parents[2]
BINARY = str(Path(sys.executable).with_name("lxcfs-guard"))


def hook(stdin: bytes, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LXCFS_GUARD_")}
    full_env.update(env or {})
    return subprocess.run([BINARY, "oci-hook", *args], input=stdin, capture_output=True, timeout=30, env=full_env)


@pytest.fixture
def empty_dirs() -> Iterator[tuple[str, str]]:
    """A mountpoint nothing serves and a state dir, both ours."""
    top = tempfile.mkdtemp(prefix="lxcfs-guard-hookin-")
    mnt, state = os.path.join(top, "mnt"), os.path.join(top, "state")
    os.makedirs(mnt), os.makedirs(state)
    try:
        yield mnt, state
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("stdin", [b"", b"garbage\n", b"\xff\xfe\x00\x01", b"[1,2,3]", b'{"id": "x"}', b"{" * 100])
def test_garbage_stdin_is_lenient_by_default(stdin: bytes) -> None:
    p = hook(stdin)
    assert p.returncode == 0, p.stderr
    err = p.stderr.decode()
    assert err.startswith("lxcfs-guard oci-hook: warning: OCI state on stdin"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("how", [("--strict",), ("env",)])
def test_garbage_stdin_fails_in_strict_mode(how: tuple[str, ...]) -> None:
    p = hook(b"garbage", env={"LXCFS_GUARD_STRICT": "1"}) if how == ("env",) else hook(b"garbage", *how)
    assert p.returncode == 1
    assert "not JSON" in p.stderr.decode() and "strict mode" in p.stderr.decode()


def test_strict_annotation_in_state_counts_even_when_the_bundle_is_unreadable(empty_dirs: tuple[str, str]) -> None:
    mnt, state_dir = empty_dirs
    state = {
        "id": "x",
        "status": "creating",
        "pid": os.getpid(),
        "bundle": "/nonexistent/bundle",
        "annotations": {"io.lxcfs-guard.strict": "true"},
    }
    p = hook(json.dumps(state).encode(), "--mountpoint", mnt, "--state-dir", state_dir)
    assert p.returncode == 1
    assert "/nonexistent/bundle/config.json" in p.stderr.decode()
    p = hook(json.dumps({**state, "annotations": {}}).encode(), "--mountpoint", mnt, "--state-dir", state_dir)
    assert p.returncode == 0 and "warning" in p.stderr.decode()


def test_oversized_stdin_is_refused_clearly() -> None:
    p = hook(b" " * ((1 << 20) + 10), "--strict")
    assert p.returncode == 1 and b"larger than" in p.stderr


def test_hook_is_fast_on_the_error_path() -> None:
    """The whole process (interpreter start-up included) on a path that imports what a real run imports
    except the engine; the full bind path is timed in test_oci_runc."""
    best = min(_timed(lambda: hook(b"garbage")) for _ in range(3))
    assert best < 0.1, f"hook took {best * 1000:.0f} ms"


def _timed(fn) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def snippet() -> dict:
    return json.loads((REPO / "deploy" / "runc" / "config-snippet.json").read_text())


def test_runc_container_starts_without_a_daemon_when_lenient(empty_dirs: tuple[str, str]) -> None:
    mnt, state_dir = empty_dirs
    hooks = guard_hooks(BINARY, ["--mountpoint", mnt, "--state-dir", state_dir], snippet())
    with container(hooks=hooks) as c:
        host_total = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        assert c.read("/proc/meminfo").splitlines()[0].split()[1] == host_total  # the host's /proc, unharmed
        assert os.listdir(state_dir) == [] or not any(c.id in f for f in os.listdir(state_dir))


def test_runc_refuses_to_start_in_strict_mode_without_a_daemon(empty_dirs: tuple[str, str]) -> None:
    mnt, state_dir = empty_dirs
    hooks = guard_hooks(BINARY, ["--mountpoint", mnt, "--state-dir", state_dir], snippet())
    with container(hooks=hooks, annotations={"io.lxcfs-guard.strict": "true"}, start=False) as c:
        with pytest.raises(RuntimeError) as exc:
            c.run()
        msg = str(exc.value)
        assert "nothing serves" in msg and "strict mode" in msg, msg
        assert c._runc("state", c.id, check=False, capture_output=True).returncode != 0  # runc destroyed it


def test_stdin_never_closed_gives_up_by_the_deadline() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LXCFS_GUARD_")}
    env["LXCFS_GUARD_HOOK_DEADLINE"] = "0.3"
    p = subprocess.Popen([BINARY, "oci-hook"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        p.stdin.write(b'{"id": "x", ')  # half a state, and the writer never closes
        p.stdin.flush()
        rc = p.wait(timeout=10)
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()
        p.stderr.close()
    assert rc == 0 and b"deadline" in err and b"Traceback" not in err, err
