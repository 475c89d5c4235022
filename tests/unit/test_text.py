"""L6: the one escaping rule for ids and paths put in front of a person."""

from __future__ import annotations

import pytest

from lxcfs_guard.text import printable


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("web-1", "web-1"),
        ("conteneur-é-容器", "conteneur-é-容器"),
        ("evil\x1b[2J", "evil\\x1b[2J"),
        ("a\nlxcfs-guard supervise: forged", "a\\nlxcfs-guard supervise: forged"),
        ("tab\there", "tab\\there"),
        ("c1\x9bx", "c1\\x9bx"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        (b"raw\xffbyte", "raw\\xffbyte"),
        ("raw\udcffbyte", "raw\\xffbyte"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_printable(raw: str | bytes, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(raw).isprintable()
    printable(raw).encode("utf-8")  # never a surrogate a strict stream would refuse
