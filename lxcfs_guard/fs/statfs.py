"""What statfs(2) on our mount says. All zeros (what LXCFS answers) reads as a 0-byte filesystem: df hides
it but monitoring divides by it (node_exporter's used ratio is NaN for fuse.lxcfs, LXD PR #14797). So we
report the tree's size bound in 4 KiB blocks, all of them free, and its inode count, all free: a small,
read-only, empty filesystem, which no ratio or "disk full" alert trips on.
"""

from __future__ import annotations

BLOCK = 4096


def statfs_numbers(sizes: list[int], inodes: int) -> dict[str, int]:
    blocks = max(1, (sum(sizes) + BLOCK - 1) // BLOCK)
    files = max(1, inodes)
    return {
        "f_bsize": BLOCK,
        "f_frsize": BLOCK,
        "f_blocks": blocks,
        "f_bfree": blocks,
        "f_bavail": blocks,
        "f_files": files,
        "f_ffree": files,
        "f_favail": files,
        "f_namemax": 255,
    }
