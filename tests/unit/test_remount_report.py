"""Reports: the ok flag, the JSON a script parses, the text a person reads."""

from __future__ import annotations

import errno
import json

from lxcfs_guard.remount.report import (
    ALREADY_LIVE,
    FAILED,
    GONE,
    REFUSED,
    REPAIRED,
    NamespaceReport,
    RemountReport,
    TargetError,
)


def test_ok_only_when_nothing_is_left_broken() -> None:
    r = RemountReport("/var/lib/lxcfs", "fuse.lxcfs-guard")
    r.namespaces = [
        NamespaceReport("a", 1, 11, REPAIRED, ["/proc/meminfo"]),
        NamespaceReport("b", 2, 12, ALREADY_LIVE),
        NamespaceReport("c", 3, 13, GONE),
    ]
    assert r.ok
    for bad in (REFUSED, FAILED):
        r.namespaces.append(NamespaceReport("d", 4, 14, bad, errors=[TargetError("/proc/stat", errno.ELOOP, "x")]))
        assert not r.ok
        r.namespaces.pop()
    r.error = "live mount gone"
    assert not r.ok


def test_json_names_container_target_and_errno() -> None:
    r = RemountReport("/mnt", "fuse.lxcfs-guard")
    r.live_dev = (0 << 8) | 52
    r.mode = "beneath"
    r.namespaces = [
        NamespaceReport(
            "mntns:7", 9, 7, FAILED, ["/proc/meminfo"], [TargetError("/proc/stat", errno.ELOOP, "a symlink")], 1.23456
        )
    ]
    doc = json.loads(r.to_json())
    assert doc["ok"] is False and doc["live_dev"] == "0:52" and doc["counts"][FAILED] == 1
    (ns,) = doc["namespaces"]
    assert ns["id"] == "mntns:7" and ns["duration_ms"] == 1.235
    assert ns["errors"] == [{"target": "/proc/stat", "errno": errno.ELOOP, "errname": "ELOOP", "message": "a symlink"}]


def test_text_has_a_line_per_container_and_a_summary() -> None:
    r = RemountReport("/mnt", "fuse.lxcfs-guard", dry_run=True)
    r.namespaces = [NamespaceReport("c1", 5, 6, REPAIRED, ["/a", "/b"])]
    text = r.text()
    assert "c1" in text and "would repair" in text and "2 bind(s)" in text
    assert text.splitlines()[-1].startswith("1 container(s): 1 repaired (dry run)")


def test_escape_makes_any_name_printable_through_a_strict_ascii_stdout() -> None:
    from lxcfs_guard.remount.report import encodable
    from lxcfs_guard.text import printable

    name = b"/tmp/\xff\x1b[31m\\x".decode(errors="surrogateescape")
    assert printable(name) == "/tmp/\\xff\\x1b[31m\\\\x"
    assert printable("/tmp/é") == "/tmp/é"
    assert encodable("/tmp/é", "ascii") == "/tmp/\\xe9"


def test_broken_lists_each_target_left_broken_and_why() -> None:
    from lxcfs_guard.remount.report import FAILED, REPAIRED, NamespaceReport, RemountReport, TargetError

    r = RemountReport("/var/lib/lxcfs", "fuse.lxcfs-guard")
    r.namespaces = [
        NamespaceReport("a", 1, 2, REPAIRED, ["/proc/meminfo"]),
        NamespaceReport("b", 3, 4, FAILED, errors=[TargetError("/x", 110, "timed out")]),
    ]
    assert [(b["id"], b["target"], b["errname"]) for b in r.broken()] == [("b", "/x", "ETIMEDOUT")]
    assert r.to_dict()["broken"] == r.broken() and not r.ok
