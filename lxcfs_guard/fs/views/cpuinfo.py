"""/proc/cpuinfo keeping only the processor blocks of the CPUs a cgroup may use, renumbered 0..N-1
(LXCFS semantics). Works on any block format whose blocks start with a `processor` line."""

from __future__ import annotations


def split_blocks(host: str) -> tuple[str, list[tuple[int, list[str]]]]:
    """(text before the first processor block, [(host cpu number, block lines)])."""
    head: list[str] = []
    blocks: list[tuple[int, list[str]]] = []
    for line in host.splitlines(keepends=True):
        if line.startswith("processor"):
            try:
                num = int(line.split(":", 1)[1])
            except (IndexError, ValueError):
                num = len(blocks)
            blocks.append((num, [line]))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            head.append(line)
    return "".join(head), blocks


def render_cpuinfo(host: str, cpus: tuple[int, ...] | list[int]) -> str:
    allowed = set(cpus)
    head, blocks = split_blocks(host)
    out = [head]
    n = 0
    for num, lines in blocks:
        if num not in allowed:
            continue
        first = lines[0]
        sep = first[len("processor") : first.index(":") + 1] if ":" in first else "\t:"
        out.append(f"processor{sep} {n}\n")
        out.extend(lines[1:])
        n += 1
    return "".join(out)
