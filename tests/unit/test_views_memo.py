"""The one-entry host-text memo the views parse through (fs/views/memo.py)."""

from lxcfs_guard.fs.views.memo import per_host_text


def test_a_host_text_is_parsed_once_until_it_changes() -> None:
    calls: list[str] = []

    @per_host_text
    def parse(text: str) -> int:
        calls.append(text)
        return len(text)

    a = "MemTotal: 1 kB\n"
    assert parse(a) == parse(a) == len(a)
    assert parse("".join(["MemTotal: 1", " kB\n"])) == len(a)  # an equal text made anew: no new parse
    assert calls == [a]
    assert parse("x\n") == 2 and calls == [a, "x\n"]
    assert parse(a) == len(a) and len(calls) == 3
