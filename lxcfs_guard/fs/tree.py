"""The fixed file tree, built once from config.ALL_FILES: inode numbers, parents, names, kinds.

Nothing in it changes while the daemon runs, so the kernel may cache entries and attributes for long
(entry/attr timeouts): every lookup or getattr it saves is a FUSE round trip saved.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from lxcfs_guard import config

ROOT_INODE = 1


@dataclass(slots=True)
class Node:
    inode: int
    name: str  # path relative to the mountpoint ("" for the root)
    is_dir: bool
    children: dict[bytes, int] = field(default_factory=dict)

    @property
    def mode(self) -> int:
        return (stat.S_IFDIR | 0o555) if self.is_dir else (stat.S_IFREG | 0o444)


class Tree:
    def __init__(self, files: tuple[str, ...] = config.ALL_FILES) -> None:
        self.nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, "", True)}
        self.by_path: dict[str, int] = {"": ROOT_INODE}
        for path in files:
            self._add(path)

    def _add(self, path: str) -> None:
        parts = path.strip("/").split("/")
        parent = ROOT_INODE
        for i, part in enumerate(parts):
            sub = "/".join(parts[: i + 1])
            inode = self.by_path.get(sub)
            if inode is None:
                inode = len(self.nodes) + 1
                self.nodes[inode] = Node(inode, sub, is_dir=i < len(parts) - 1)
                self.by_path[sub] = inode
                self.nodes[parent].children[part.encode()] = inode
            parent = inode

    def lookup(self, parent: int, name: bytes) -> Node | None:
        node = self.nodes.get(parent)
        if node is None or not node.is_dir:
            return None
        if name == b".":
            return node
        inode = node.children.get(name)
        return self.nodes[inode] if inode is not None else None

    def get(self, inode: int) -> Node | None:
        return self.nodes.get(inode)

    def files(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.is_dir]
