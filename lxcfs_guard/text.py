"""One rule for putting names we do not control (container ids, paths, mount sources) in front of a person:
`printable()`. Ids come from runtimes and users, paths from containers and mount tables; printed raw, a
control character forges a log line or drives the terminal (ESC sequences), and a non-UTF-8 byte crashes
a strict stdout. Pure; imports nothing of ours, so every layer may use it."""

from __future__ import annotations


def printable(value: object) -> str:
    """`value` with every character a terminal or a log would act on escaped as in a Python literal:
    control characters (\\n, \\x1b, C1), the surrogates a non-UTF-8 byte decodes to (shown as the byte,
    \\xff) and, so that the escaping reads back unambiguously, the backslash itself. Bytes are decoded
    with surrogateescape first. Printable text, any script, is kept as it is."""
    if isinstance(value, bytes):
        value = value.decode(errors="surrogateescape")
    s = value if isinstance(value, str) else str(value)
    if s.isprintable() and "\\" not in s:
        return s
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= o <= 0xDCFF:  # a raw byte that was not UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)
