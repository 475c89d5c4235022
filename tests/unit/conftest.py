"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def device() -> Iterator[tuple[int, int]]:
    """A pipe standing in for the FUSE device: poll reports its read end readable while a byte (a queued
    request) is in it. Yields (read end, write end)."""
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)
