"""Walk a template once and keep what a clone needs, so cloning never stats the source."""

from __future__ import annotations

import os
import stat
from collections import Counter
from functools import cached_property
from typing import Any, Optional

from ._base import Named

# (relative path with a leading separator, mode, atime_ns, mtime_ns, size)
Entry = tuple[str, int, int, int, int]
# (relative path, link target, atime_ns, mtime_ns)
Link = tuple[str, str, int, int]
# (inode, ctime_ns): what user space cannot set back after changing a file
Stamp = tuple[int, int]
_WRITE = 0o222


class Tree:
    """A snapshot of a directory tree's shape: directories top-down, files, symlinks."""

    def __init__(
        self,
        root: str,
        root_entry: Entry,
        dirs: Optional[list[Entry]] = None,
        files: Optional[list[Entry]] = None,
        links: Optional[list[Link]] = None,
        stamps: Optional[dict[str, Stamp]] = None,
    ) -> None:
        self.root = root
        self.root_entry = root_entry
        self.dirs: list[Entry] = [] if dirs is None else dirs
        self.files: list[Entry] = [] if files is None else files
        self.links: list[Link] = [] if links is None else links
        # (inode, ctime_ns) by relative path ("" for the root): a file changed in any way
        # since the walk, even with its size and mtime put back, has another ctime; a
        # replaced one, another inode.
        self.stamps: dict[str, Stamp] = {} if stamps is None else stamps

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

    def listing(self, *, stamps: bool = True) -> dict[str, Any]:
        """A JSON-able description of the tree's shape, to detect later damage: names, kinds,
        modes, sizes, mtimes and (with ``stamps``) inodes and ctimes."""

        def st(rel: str) -> list[int]:
            return list(self.stamps.get(rel, (0, 0))) if stamps else []

        return {
            "root": [self.root_entry[1], *st("")],
            "dirs": [[e[0], e[1], *st(e[0])] for e in self.dirs],
            "files": [[e[0], e[1], e[3], e[4], *st(e[0])] for e in self.files],
            "links": [[lk[0], lk[1], *st(lk[0])] for lk in self.links],
        }

    def with_write_bits(self, bits: dict[str, Any]) -> Tree:
        """This tree as it was before :func:`strip_write_bits` returned ``bits``: the modes a
        clone must get. The walk of a protected template is cloned with these."""
        default, other = int(bits["default"]), bits.get("other", {})

        def add(e: Entry) -> Entry:
            return (e[0], e[1] | int(other.get(e[0], default)), e[2], e[3], e[4])

        dirs, files = [add(e) for e in self.dirs], [add(e) for e in self.files]
        return Tree(self.root, add(self.root_entry), dirs, files, self.links, self.stamps)


def strip_write_bits(tree: Tree) -> dict[str, Any]:
    """Make every file and directory of ``tree`` read-only to everyone but root; return the
    write bits removed (JSON-able, for :meth:`Tree.with_write_bits`), most of which are alike.
    ``tree`` itself is left as it was walked."""
    entries = [tree.root_entry, *tree.dirs, *tree.files]
    default = Counter(e[1] & _WRITE for e in entries).most_common(1)[0][0]
    other = {e[0]: e[1] & _WRITE for e in entries if e[1] & _WRITE != default}
    # Files first, then directories deepest first. The walk saw no symlink at these paths,
    # and nobody else writes a template while its builder holds the lock.
    for rel, mode, *_ in [*tree.files, *reversed(tree.dirs), tree.root_entry]:
        if mode & _WRITE:
            os.chmod(tree.root + rel, stat.S_IMODE(mode) & ~_WRITE)
    return {"default": default, "other": other}


def _entry(rel: str, st: os.stat_result, tree: Tree) -> Entry:
    tree.stamps[rel] = (st.st_ino, st.st_ctime_ns)
    return (rel, st.st_mode, st.st_atime_ns, st.st_mtime_ns, st.st_size)


def walk_tree(root: str | os.PathLike[str]) -> Tree:
    """Record every directory, regular file and symlink under ``root`` (never following links).

    Other file types (sockets, fifos, devices) have no place in an environment and are
    refused with :class:`ValueError`.
    """
    root = os.fspath(root)
    tree = Tree(root, ("", 0, 0, 0, 0))
    tree.root_entry = _entry("", os.stat(root, follow_symlinks=False), tree)
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(root + rel_dir) as it:
            for item in sorted(it, key=lambda e: e.name):
                rel = f"{rel_dir}{os.sep}{item.name}"
                st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    tree.dirs.append(_entry(rel, st, tree))
                    pending.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    tree.files.append(_entry(rel, st, tree))
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(item.path)
                    tree.stamps[rel] = (st.st_ino, st.st_ctime_ns)
                    tree.links.append((rel, target, st.st_atime_ns, st.st_mtime_ns))
                else:
                    raise ValueError(f"{item.path}: not a file, directory or symlink")
    # Parents must exist before children: pop() makes the walk depth-first, so sort by depth.
    tree.dirs.sort(key=lambda e: e[0].count(os.sep))
    return tree
