"""Text for the terminal: the header line (what ``auto`` will do here, and why)."""

from __future__ import annotations

import os

from .session import Settings
from .store import default_root


def header_line(settings: Settings) -> str:
    root = settings.root or str(default_root())
    probe_at = root
    while not os.path.isdir(probe_at):  # the cache may not exist yet: describe where it will be
        parent = os.path.dirname(probe_at)
        if parent == probe_at:
            break
        probe_at = parent
    from .fs import probe

    try:
        info = probe(probe_at)
    except OSError as exc:
        return f"cowenv: dir={root}, unusable ({exc.strerror})"
    mode = settings.link_mode.value
    strategy = info.best_strategy if mode == "auto" else mode
    why = ""
    if mode == "auto" and strategy == "copy":
        why = f" ({info.fstype} cannot clone: {info.reason})"
    pool = f"pool={settings.pool}" if settings.pool else "pool=off"
    return f"cowenv: dir={root}, fs={info.fstype}, strategy={strategy}{why}, {pool}"
