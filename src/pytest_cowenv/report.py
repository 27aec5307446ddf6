"""Text for the terminal: the header line (what ``auto`` will do here, and why).

The header is printed by every run, also one that never uses an environment, so it must
cost about nothing: a full filesystem probe (ctypes, the clone engine, a test clone) runs
once per cache directory and its answer is remembered in that directory (created here if
needed, as its first use would).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Optional

from .marker import write_new_file

PROBE_MEMO = "fs-probe.json"
_MEMO_FORMAT = 1


def header_line(root: Optional[str], link_mode: str = "auto", pool: int = 0) -> str:
    """``cowenv: dir=…, fs=…, strategy=…`` for the cache root (default: the user cache dir),
    with the reason when ``auto`` falls back to copies."""
    if root is None:
        from .store import default_root

        root = str(default_root())
    # The plugin's start-up has made a missing cache dir (and marked it ours) already.
    probe_at = root
    while not os.path.isdir(probe_at):  # cannot be made: describe the place it would be in
        parent = os.path.dirname(probe_at)
        if parent == probe_at:
            break
        probe_at = parent
    try:
        fstype, best, reason = probe_summary(probe_at, remember=probe_at == root and _safe(root))
    except OSError as exc:
        return f"cowenv: dir={root}, unusable ({exc.strerror or exc})"
    strategy, why = link_mode, ""
    if link_mode == "auto":
        strategy = best
        if best == "copy":
            why = f" ({fstype} cannot clone: {reason or 'no reflink support'})"
    pool_text = f"pool={pool}" if pool else "pool=off"
    return f"cowenv: dir={root}, fs={fstype}, strategy={strategy}{why}, {pool_text}"


def _safe(root: str) -> bool:
    """Only our own cache dir, vetted by ``store.check_safe``, may hold (and be trusted for)
    a memo: a memo anywhere else could be anyone's."""
    from .errors import CowEnvError
    from .marker import classify
    from .store import check_safe

    try:
        check_safe(Path(root))
    except (OSError, CowEnvError):
        return False
    return classify(root).kind == "ours"


def probe_summary(path: str, remember: bool = False) -> tuple[str, str, str]:
    """``(filesystem type, strategy auto picks, why files cannot be cloned)`` at ``path``.

    With ``remember``, the answer is kept in ``path/fs-probe.json`` for as long as ``path``
    stays on the same device; without it, no memo is read or written.
    """
    dev = os.stat(path).st_dev
    memo = os.path.join(path, PROBE_MEMO)
    # A memo outside our own, vetted cache dir could be anyone's: never read it; nor one
    # that is a link (not ours: neither read nor replaced).
    remember = remember and not os.path.islink(memo)
    if remember:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            with os.fdopen(os.open(memo, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
                data = json.load(f)
            if data["format"] == _MEMO_FORMAT and data["st_dev"] == dev:
                return str(data["fstype"]), str(data["strategy"]), str(data["reason"])
    from .fs import probe

    info = probe(path)
    answer = (info.fstype, info.best_strategy, info.reason)
    if remember:
        data = {"format": _MEMO_FORMAT, "st_dev": dev, "fstype": answer[0]}
        data.update(strategy=answer[1], reason=answer[2])
        tmp = f"{memo}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            write_new_file(tmp, json.dumps(data).encode())
            os.replace(tmp, memo)
        except OSError:  # a read-only cache still works; it is just probed every run
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return answer
