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
