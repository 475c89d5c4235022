"""The pure parts of the cgroup v2 VM harness (tests/vm): module list parsing, the cpio writer, junit counting."""

from __future__ import annotations

import gzip

from tests.vm.initramfs import NewcWriter, build_archive, parse_show_depends
from tests.vm.junit import count_junit


def test_show_depends_keeps_load_order_options_and_skips_builtins() -> None:
    text = (
        "insmod /lib/modules/6.1.0-56-amd64/kernel/drivers/virtio/virtio_ring.ko \n"
        "builtin crc32c\n"
        "insmod /lib/modules/6.1.0-56-amd64/kernel/net/9p/9pnet.ko debug=1\n"
    )
    assert parse_show_depends(text) == [
        ("/lib/modules/6.1.0-56-amd64/kernel/drivers/virtio/virtio_ring.ko", ""),
        ("/lib/modules/6.1.0-56-amd64/kernel/net/9p/9pnet.ko", "debug=1"),
    ]


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """A minimal newc reader, independent of the writer: name -> (mode, content)."""
    out, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701", pos
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[pos : pos + size])
        pos += size
        pos += -pos % 4


def test_newc_archive_round_trips_with_alignment() -> None:
    w = NewcWriter()
    w.directory("bin")
    w.file("init", b"#!/bin/sh\n", 0o755)
    w.file("bin/odd", b"x" * 5)
    entries = _read_newc(w.finish())
    assert entries["bin"][0] == 0o040755
    assert entries["init"] == (0o100755, b"#!/bin/sh\n")
    assert entries["bin/odd"] == (0o100644, b"xxxxx")


def test_archive_lists_modules_in_load_order(tmp_path) -> None:
    a, b = tmp_path / "a.ko", tmp_path / "b.ko"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    entries = _read_newc(gzip.decompress(build_archive([(str(a), ""), (str(b), "x=1")], b"init", b"bb")))
    assert entries["modules/load.list"][1] == b"/modules/00-a.ko\n/modules/01-b.ko x=1\n"
    assert entries["modules/01-b.ko"][1] == b"B"
    assert entries["init"][0] == 0o100755


def test_junit_counts_what_ran_not_what_skipped() -> None:
    xml = """<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4">
      <testcase classname="a" name="ok"/>
      <testcase classname="a" name="skip"><skipped message="no v2"/></testcase>
      <testcase classname="a" name="bad"><failure message="boom"/></testcase>
      <testcase classname="a" name="err"><error message="setup"/></testcase>
    </testsuite></testsuites>"""
    c = count_junit(xml)
    assert (c.total, c.passed, c.failed, c.errors, c.skipped, c.ran) == (4, 1, 1, 1, 1, 3)
    assert c.summary().startswith("3 v2 tests ran in the VM (not skipped)")
