"""The one atomic writer every state file goes through (serve's state, status.json, the registry)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lxcfs_guard.kernel.files import write_atomic


@pytest.mark.parametrize("durable", [False, True])
def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    inode = path.stat().st_ino
    write_atomic(str(path), b"new" * 10000, durable=durable)
    assert path.read_bytes() == b"new" * 10000
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert os.listdir(tmp_path) == ["state.json"]


def test_write_atomic_into_a_missing_directory_raises_and_keeps_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(str(tmp_path / "missing" / "x.json"), b"{}")
    assert os.listdir(tmp_path) == []


def test_state_files_are_private_and_never_followed(tmp_path: Path) -> None:
    """M1: the state directory 0700, its files 0600; a symlink or someone else's file planted there is
    refused, not followed or trusted."""
    import stat

    from lxcfs_guard.kernel.files import open_private, private_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    private_dir(str(state))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    os.close(open_private(str(state / "a.lock")))
    assert stat.S_IMODE((state / "a.lock").stat().st_mode) == 0o600
    (state / "old.lock").write_text("")
    os.chmod(state / "old.lock", 0o644)  # left by an older version
    os.close(open_private(str(state / "old.lock")))
    assert stat.S_IMODE((state / "old.lock").stat().st_mode) == 0o600
    (tmp_path / "elsewhere").write_text("x")
    os.symlink(tmp_path / "elsewhere", state / "link.lock")
    with pytest.raises(OSError):
        open_private(str(state / "link.lock"))
    (state / "theirs.lock").write_text("")
    os.chown(state / "theirs.lock", 65534, 65534)
    with pytest.raises(OSError):
        open_private(str(state / "theirs.lock"))
    os.mkfifo(state / "fifo.lock")
    with pytest.raises(OSError):
        open_private(str(state / "fifo.lock"))  # never blocks on a fifo either


def test_lock_gives_up_at_its_deadline(tmp_path: Path) -> None:
    import fcntl
    import time

    from lxcfs_guard.kernel.files import LockTimeout, lock, open_lock

    holder = open_lock(str(tmp_path / "x.lock"))
    fcntl.flock(holder, fcntl.LOCK_EX)
    fd = open_lock(str(tmp_path / "x.lock"))
    try:
        t = time.monotonic()
        with pytest.raises(LockTimeout):
            lock(fd, t + 0.2)
        assert 0.2 <= time.monotonic() - t < 1.0
        os.close(holder)
        lock(fd, time.monotonic() + 0.2)  # free now: taken at once
    finally:
        os.close(fd)


def test_write_atomic_never_writes_through_a_planted_temp_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / f"state.json.tmp-{os.getpid()}")
    write_atomic(str(tmp_path / "state.json"), b"new")
    assert victim.read_text() == "keep" and (tmp_path / "state.json").read_bytes() == b"new"
