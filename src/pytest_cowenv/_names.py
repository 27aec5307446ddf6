"""The exact names of the entries a cache holds, one pattern each.

Clean-up touches only names that match these exactly: a look-alike a user put there
(`templates/notes/`, `templates/a.json`, `kept/todo.txt`) stays. ``store`` lays a cache out
by them and ``marker`` recognises what ``rm -rf`` leaves of one by them, so both read the
same patterns. A leaf: it imports nothing of ours but ``_owner``'s token pattern.
"""

from __future__ import annotations

import re
from typing import Optional

from ._owner import TOKEN


class Pattern:
    """A regular expression compiled when it is first used: a run uses few of these, and a
    run whose cache is marked as ours none at its start."""

    __slots__ = ("_compiled", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._compiled: Optional[re.Pattern[str]] = None

    def match(self, name: str) -> Optional[re.Match[str]]:
        return self._regex().match(name)

    def fullmatch(self, name: str) -> Optional[re.Match[str]]:
        return self._regex().fullmatch(name)

    def _regex(self) -> re.Pattern[str]:
        if self._compiled is None:  # two threads may both compile it: the same pattern
            self._compiled = re.compile(self.source)
        return self._compiled


KEY = r"[0-9a-f]{24}"  # spec.key()

# Names that carry their owner (see _owner.Owner.token): a process's clone folder under
# `clones/`, a build folder under `tmp/`, an unfinished file (see store.temp_name).
RUN_DIR = Pattern(rf"^run-{TOKEN}-[0-9a-f]{{6}}$")
BUILD_DIR = Pattern(rf"^{KEY}\.{TOKEN}\.[0-9a-f]{{8}}$")
TMP_FILE = Pattern(rf"^\..+\.{TOKEN}\.tmp$")
# The same names as earlier versions wrote them: only the pid (and start ticks of run folders).
LEGACY_RUN_DIR = Pattern(r"^run-(?P<pid>\d+)-(?P<ticks>\d+)-[0-9a-f]+$")
LEGACY_BUILD_DIR = Pattern(rf"^{KEY}\.(?P<pid>\d+)\.[0-9a-f]+$")
LEGACY_TMP_FILE = Pattern(r"^\..+\.(?P<pid>\d+)\.tmp$")

# Under templates/ (see store.Layout.template): a generation's tree, metadata, in-use lock or
# hard-linked mark (generation 0 is the layout of earlier versions: no number), or the key's
# build lock or its owner note (`keyfile`).
TEMPLATE_ENTRY = Pattern(
    rf"^(?P<key>{KEY})(?:(?:\.(?P<gen>[1-9][0-9]*))?(?P<side>\.json|\.inuse|\.linked)?"
    r"|(?P<keyfile>\.lock|\.owner))$"
)
# Under templates/: metadata being written (its owner is judged by TMP_FILE or LEGACY_TMP_FILE;
# a generation number may follow the key).
META_TMP = Pattern(rf"^\.{KEY}(?:\.\d+)?\.json\.[0-9a-f-]+\.tmp$")

# Under kept/: `<run folder>-<env name>-<n>` (see CowEnvSession.kept_path).
_ANY_RUN = r"run-[0-9a-f-]+-[0-9a-f]{6}"
KEPT = Pattern(rf"^{_ANY_RUN}-[A-Za-z0-9_.]+-\d+$")

# Under versions/ (see _releases.list_releases): a listing of a project's releases, or the
# lock its listers take; a listing being written (store.temp_name).
LISTING = Pattern(rf"^{KEY}\.(?:json|lock)$")
LISTING_TMP = Pattern(rf"^\.{KEY}\.json\.{TOKEN}\.tmp$")

# Under pyc/ (see _bytecode.tmp_name): a store file (the secret, or an entry two folders down)
# being written by the compiler process `pid`.
BYTECODE_TMP = Pattern(r"^.+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")

# Under wheels/ (see _wheelcache): a built wheel's folder (the wheel and its `wheel.json`),
# or the lock its builders take.
WHEEL_ENTRY = Pattern(rf"^(?P<key>{KEY})(?P<lock>\.lock)?$")


def is_generation(name: str, *, is_dir: bool) -> bool:
    """Whether ``name`` under templates/ is a numbered generation's tree (``is_dir``) or one
    of its side files: what this version adds to the layout of earlier ones."""
    match = TEMPLATE_ENTRY.match(name)
    if match is None or match["gen"] is None:
        return False
    return is_dir == (match["side"] is None)
