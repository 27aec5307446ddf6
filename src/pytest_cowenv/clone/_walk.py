"""Walk a template once and keep what a clone needs, so cloning never stats the source."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# (relative path with a leading separator, mode, atime_ns, mtime_ns, size)
Entry = tuple[str, int, int, int, int]
# (relative path, link target, atime_ns, mtime_ns)
Link = tuple[str, str, int, int]
# (name, mode, atime_ns, mtime_ns, size): an Entry inside its directory
Named = tuple[str, int, int, int, int]


@dataclass
class Tree:
    """A snapshot of a directory tree's shape: directories top-down, files, symlinks."""

    root: str
    root_entry: Entry
    dirs: list[Entry] = field(default_factory=list)
    files: list[Entry] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(entry[4] for entry in self.files)

    @property
    def nfiles(self) -> int:
        return len(self.files) + len(self.links)

    @cached_property
    def files_by_dir(self) -> list[tuple[str, list[Named]]]:
        """The files grouped by directory (relative path, "" for the root), so that a clone
        can open each directory once and create its files by name."""
        groups: dict[str, list[Named]] = {}
        for rel, mode, atime_ns, mtime_ns, size in self.files:
            parent, _, name = rel.rpartition(os.sep)
            groups.setdefault(parent, []).append((name, mode, atime_ns, mtime_ns, size))
        return list(groups.items())

    def listing(self) -> dict[str, Any]:
        """A JSON-able description of the tree's content, to detect later damage."""
        return {
            "dirs": [e[0] for e in self.dirs],
            "files": [[e[0], e[1], e[3], e[4]] for e in self.files],
            "links": [[lk[0], lk[1]] for lk in self.links],
        }


def _entry(rel: str, st: os.stat_result) -> Entry:
    return (rel, st.st_mode, st.st_atime_ns, st.st_mtime_ns, st.st_size)


def walk_tree(root: str | os.PathLike[str]) -> Tree:
    """Record every directory, regular file and symlink under ``root`` (never following links).

    Other file types (sockets, fifos, devices) have no place in an environment and are
    refused with :class:`ValueError`.
    """
    root = os.fspath(root)
    tree = Tree(root, _entry("", os.stat(root, follow_symlinks=False)))
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(root + rel_dir) as it:
            for item in sorted(it, key=lambda e: e.name):
                rel = f"{rel_dir}{os.sep}{item.name}"
                st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    tree.dirs.append(_entry(rel, st))
                    pending.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    tree.files.append(_entry(rel, st))
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(item.path)
                    tree.links.append((rel, target, st.st_atime_ns, st.st_mtime_ns))
                else:
                    raise ValueError(f"{item.path}: not a file, directory or symlink")
    # Parents must exist before children: pop() makes the walk depth-first, so sort by depth.
    tree.dirs.sort(key=lambda e: e[0].count(os.sep))
    return tree
