"""Make a virtual environment independent of the path it was built at.

Done once, in the template, so that every clone works wherever it lives.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import urllib.parse
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Optional

from ._venv import canonical_name

# The shell reads line 2 as `exec <python beside this script> <script> <args>`; Python reads
# lines 2-3 as one string literal and goes on with the entry-point code below them.
LAUNCHER_HEAD = "#!/bin/sh\n'''exec' \"$(dirname -- \"$0\")/python\" \"$0\" \"$@\"\n' '''\n"

ACTIVATE = r"""# Source this file from bash or zsh: `. bin/activate`. It finds its environment from
# its own location, so it works in any clone of the template it was written into.
deactivate () {
    if [ -n "${_OLD_VIRTUAL_PATH:-}" ]; then PATH="$_OLD_VIRTUAL_PATH"; export PATH; fi
    if [ -n "${_OLD_VIRTUAL_PS1:-}" ]; then PS1="$_OLD_VIRTUAL_PS1"; export PS1; fi
    unset _OLD_VIRTUAL_PATH _OLD_VIRTUAL_PS1
    hash -r 2>/dev/null
    unset VIRTUAL_ENV VIRTUAL_ENV_PROMPT
    if [ "${1:-}" != "nondestructive" ]; then unset -f deactivate; fi
}
deactivate nondestructive
if [ -n "${BASH_SOURCE:-}" ]; then
    _cowenv_here="${BASH_SOURCE[0]}"
elif [ -n "${ZSH_VERSION:-}" ]; then
    eval '_cowenv_here="${(%):-%x}"'
else
    _cowenv_here="$0"
fi
VIRTUAL_ENV="$(CDPATH= cd -- "$(dirname -- "$_cowenv_here")/.." && pwd)"
unset _cowenv_here
VIRTUAL_ENV_PROMPT="$(basename -- "$VIRTUAL_ENV")"
export VIRTUAL_ENV VIRTUAL_ENV_PROMPT
_OLD_VIRTUAL_PATH="$PATH"
PATH="$VIRTUAL_ENV/bin:$PATH"
export PATH
if [ -z "${VIRTUAL_ENV_DISABLE_PROMPT:-}" ]; then
    _OLD_VIRTUAL_PS1="${PS1:-}"
    PS1="($VIRTUAL_ENV_PROMPT) ${PS1:-}"
    export PS1
fi
hash -r 2>/dev/null
"""


def relocate(env: Path, built_at: Path, base: Optional[str] = None) -> int:
    """Rewrite everything in ``env`` that names ``built_at``, and the launchers that run the
    base interpreter ``base`` (an installer given the env as a prefix writes those: see
    ``install_command``); returns how many files changed."""
    changed = 0
    bin_dir = env / "bin"
    needle = os.fsencode(str(built_at))
    interpreter = os.fsencode(base) if base else None
    for script in sorted(bin_dir.iterdir()):
        if script.is_symlink() or not script.is_file():
            continue
        if script.name.startswith(("activate", "deactivate")):
            script.unlink()  # replaced by our one relocatable activate below
            changed += 1
            continue
        data = script.read_bytes()
        body = launcher_body(data, needle)
        if body is None and interpreter is not None:
            body = launcher_body(data, interpreter, exact=True)
        if body is None:
            continue
        mode = script.stat().st_mode & 0o7777
        script.write_bytes(LAUNCHER_HEAD.encode() + body)
        os.chmod(script, mode)
        changed += 1
    (bin_dir / "activate").write_text(ACTIVATE, encoding="utf-8")
    cfg = env / "pyvenv.cfg"
    lines = cfg.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.startswith("command =") and str(built_at) not in ln]
    if kept != lines:
        cfg.write_text("".join(kept), encoding="utf-8")
        changed += 1
    return changed


def launcher_body(script: bytes, needle: bytes, *, exact: bool = False) -> Optional[bytes]:
    """The code after the launcher lines of a script whose launcher names ``needle``, else None.

    Installers write ``#!<env>/bin/python`` or, for a path too long or with spaces for a
    shebang, a three-line ``/bin/sh`` trampoline that execs ``<env>/bin/python``. ``exact``:
    ``needle`` is the interpreter itself (its launcher runs exactly that), not a folder above.
    """
    lines = script.split(b"\n", 3)
    if lines[0].startswith(b"#!") and _runs(lines[0][2:], needle, exact):
        return script.partition(b"\n")[2]
    trampoline = (
        len(lines) == 4
        and lines[0].rstrip() == b"#!/bin/sh"
        and lines[1].startswith(b"'''exec' ")
        and _runs(lines[1][len(b"'''exec' ") :], needle, exact)
        and lines[2].rstrip() == b"' '''"
    )
    return lines[3] if trampoline else None


def _runs(command: bytes, needle: bytes, exact: bool) -> bool:
    """Whether a launcher's command names ``needle`` (anywhere in it), or with ``exact`` runs
    it: its first word, quoted or not, is ``needle``."""
    if not exact:
        return needle in command
    command = command.strip()
    for quote in (b"'", b'"'):
        if command.startswith(quote):
            return command[1:].partition(quote)[0] == needle
    return command.split(None, 1)[0] == needle if command else False


def point_at_sources(site: Path, origins: Mapping[Path, Path]) -> int:
    """Make ``direct_url.json`` of distributions installed from temporary wheels (``origins``:
    wheel → the project directory it was built from) name that project, not the build dir."""
    if not origins:
        return 0
    from urllib.request import url2pathname  # slow to import (http, ssl): only if needed

    by_wheel = {os.path.realpath(wheel): project for wheel, project in origins.items()}
    changed = 0
    for record_file in site.glob("*.dist-info/direct_url.json"):
        try:
            url = json.loads(record_file.read_text(encoding="utf-8"))["url"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "file":
            continue
        project = by_wheel.get(os.path.realpath(url2pathname(parsed.path)))
        if project is None:
            continue
        text = json.dumps({"url": project.as_uri(), "dir_info": {}})
        record_file.write_text(text, encoding="utf-8")
        _update_record(record_file, text.encode())
        changed += 1
    return changed


def forget_index_urls(site: Path, names: Collection[str]) -> int:
    """Remove ``direct_url.json`` (and its RECORD line) of the distributions ``names``
    (normalised names): a lock's file installed by its URL then lists as installed from its
    index (``name==version`` in ``pip freeze``), as ``uv sync`` leaves it."""
    if not names:
        return 0
    wanted, removed = set(names), 0
    for path in site.glob("*.dist-info/direct_url.json"):
        dist = path.parent.name[: -len(".dist-info")].rpartition("-")[0]
        if canonical_name(dist) not in wanted or path.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):  # no RECORD: nothing lists it
            _update_record(path, None)
        path.unlink()
        removed += 1
    return removed


def _update_record(path: Path, data: Optional[bytes]) -> None:
    """Give ``path``'s line in its distribution's RECORD the hash and size of ``data``, or
    drop the line (``None``: the file is going)."""
    record = path.parent / "RECORD"
    rel = f"{path.parent.name}/{path.name}"
    lines = record.read_text(encoding="utf-8").splitlines()
    if data is None:
        new = [ln for ln in lines if ln.split(",")[0] != rel]
    else:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        line = f"{rel},sha256={digest},{len(data)}"
        new = [line if ln.split(",")[0] == rel else ln for ln in lines]
    record.write_text("\n".join(new) + "\n", encoding="utf-8")
