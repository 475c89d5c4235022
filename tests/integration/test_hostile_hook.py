"""The OCI hook against a hostile bundle or a lying runtime (issue 11, L1 and L4): real `lxcfs-guard
oci-hook` processes, real runc containers, a real supervise serving them."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from lxcfs_guard.config import FSTYPE
from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.remount.registry import Registry
from lxcfs_guard.testing.supervise import BINARY, Supervised, supervised
from tests.support.runc import container, new_id


def _limit_memory() -> None:  # the old hook read /dev/zero until the OOM killer came: never again here
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run_hook(state: dict, *args: str, deadline: float = 3.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LXCFS_GUARD_")}
    env["LXCFS_GUARD_HOOK_DEADLINE"] = str(deadline)
    return subprocess.run(
        [BINARY, "oci-hook", *args],
        input=json.dumps(state).encode(),
        capture_output=True,
        timeout=30,
        env=env,
        preexec_fn=_limit_memory,
    )


@pytest.fixture
def bundle() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="lxcfs-guard-hostile-bundle-")
    os.mkdir(os.path.join(d, "rootfs"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _state(bundle: str, pid: int | None = None, status: str = "creating") -> dict:
    return {
        "ociVersion": "1.0.2",
        "id": new_id("hostile"),
        "status": status,
        "pid": pid or os.getpid(),
        "bundle": bundle,
    }


def test_config_linked_to_dev_zero_is_refused_at_once(bundle: str) -> None:
    """L1: a config.json that is a symlink to /dev/zero grew the hook to 24 GB."""
    os.symlink("/dev/zero", os.path.join(bundle, "config.json"))
    t = time.monotonic()
    p = run_hook(_state(bundle))
    assert time.monotonic() - t < 2.5  # refused, not read until the deadline
    err = p.stderr.decode()
    assert p.returncode == 0 and "config.json" in err and "symlink" in err, err


def test_config_content_never_reaches_an_error_message(bundle: str) -> None:
    """L1: a link to a root-only file put its first bytes in the error the runtime shows."""
    secret = os.path.join(bundle, "secret")
    with open(secret, "w") as f:
        f.write("TOPSECRET-7f3a not json at all")
    os.chmod(secret, 0o600)
    os.symlink(secret, os.path.join(bundle, "config.json"))
    err = run_hook(_state(bundle)).stderr.decode()
    assert "TOPSECRET" not in err and "symlink" in err, err
    os.unlink(os.path.join(bundle, "config.json"))
    shutil.copy(secret, os.path.join(bundle, "config.json"))  # a regular file that is not JSON: same rule
    err = run_hook(_state(bundle)).stderr.decode()
    assert "TOPSECRET" not in err and "not JSON" in err, err


def test_config_that_is_a_fifo_or_too_big_is_refused(bundle: str) -> None:
    """L1: regular files only (a FIFO would block the hook until its deadline), and a size limit."""
    path = os.path.join(bundle, "config.json")
    os.mkfifo(path)
    t = time.monotonic()
    err = run_hook(_state(bundle)).stderr.decode()
    assert time.monotonic() - t < 2.5 and "not a regular file" in err, err
    os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zeros
    err = run_hook(_state(bundle)).stderr.decode()
    assert "larger than" in err, err


@pytest.fixture(scope="module")
def guard() -> Iterator[Supervised]:
    with supervised() as g:
        yield g


def _ours(pid: int) -> list:
    return [m for m in read_mountinfo(pid) if m.fstype == FSTYPE]


def test_hook_binds_only_into_the_bundles_own_container(guard: Supervised) -> None:
    """L4: the hook bound into, and registered, whatever pid the state named. With the state of container
    A but the pid of container B, B is left alone and nothing is registered; A's own pid works."""
    with container() as a, container() as b:
        args = ("--mountpoint", guard.mountpoint, "--state-dir", guard.state_dir)
        for status in ("running", "creating"):
            forged = _state(a.bundle, pid=b.pid, status=status)
            p = run_hook(forged, *args)
            err = p.stderr.decode()
            assert p.returncode == 0 and "not this bundle's container" in err, err
            assert _ours(b.pid) == []
            assert forged["id"] not in Registry(guard.state_dir).load()
            p = run_hook(forged, "--strict", *args)
            assert p.returncode == 1 and "not this bundle's container" in p.stderr.decode()
        honest = _state(a.bundle, pid=a.pid, status="running")
        p = run_hook(honest, *args)
        assert p.returncode == 0 and not p.stderr, p.stderr
        assert _ours(a.pid) and honest["id"] in Registry(guard.state_dir).load()
        run_hook(dict(honest, status="stopped"), *args)
