"""What the layers above ask of the platform back-end, other than clones and removals: template
directories that can be cloned whole and protected, and the capability probes of
:func:`pytest_cowenv.fs.probe`. Everything outside ``clone/`` comes through these.
"""

from __future__ import annotations

import os

from ._platform import BACKEND


def make_template_dir(path: str | os.PathLike[str]) -> bool:
    """Create the directory ``path`` so that it can be cloned whole later (a btrfs subvolume);
    False means it is a plain directory."""
    return BACKEND.make_template_dir(os.fspath(path))


def protect(path: str | os.PathLike[str]) -> bool:
    """Make a template made by :func:`make_template_dir` read-only where the filesystem can
    (a btrfs subvolume); whether that changed anything."""
    return BACKEND.set_readonly(os.fspath(path), True)


def unprotect(path: str | os.PathLike[str]) -> bool:
    """Make a template writable again (for removal or on purpose); whether that changed
    anything. A plain directory is left as it is."""
    return BACKEND.set_readonly(os.fspath(path), False)


def can_snapshot(path: str | os.PathLike[str], fstype: str) -> bool:
    """Whether directories at ``path`` (on a ``fstype`` filesystem) can be cloned whole."""
    return BACKEND.can_snapshot(os.fspath(path), fstype)


def probe_reflink(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Clone the file ``src`` to the new ``dst`` once, raising OSError if this filesystem
    cannot."""
    BACKEND.probe_reflink(os.fspath(src), os.fspath(dst))
