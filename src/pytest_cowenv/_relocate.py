"""Make a virtual environment independent of the path it was built at.

Done once, in the template, so that every clone works wherever it lives.
"""

from __future__ import annotations

import os
from pathlib import Path

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
VIRTUAL_ENV="$(cd "$(dirname -- "$_cowenv_here")/.." && pwd)"
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


def relocate(env: Path, built_at: Path) -> int:
    """Rewrite everything in ``env`` that names ``built_at``; returns how many files changed."""
    changed = 0
    bin_dir = env / "bin"
    needle = os.fsencode(str(built_at))
    for script in sorted(bin_dir.iterdir()):
        if script.is_symlink() or not script.is_file():
            continue
        if script.name.startswith("activate") or script.name.startswith("deactivate"):
            script.unlink()  # replaced by our one relocatable activate below
            changed += 1
            continue
        with open(script, "rb") as f:
            head = f.readline()
            if not (head.startswith(b"#!") and needle in head):
                continue
            rest = f.read()
        st = script.stat()
        script.write_bytes(LAUNCHER_HEAD.encode() + rest)
        os.chmod(script, st.st_mode & 0o7777)
        changed += 1
    (bin_dir / "activate").write_text(ACTIVATE, encoding="utf-8")
    cfg = env / "pyvenv.cfg"
    lines = cfg.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.startswith("command =") and str(built_at) not in ln]
    if kept != lines:
        cfg.write_text("".join(kept), encoding="utf-8")
        changed += 1
    return changed
