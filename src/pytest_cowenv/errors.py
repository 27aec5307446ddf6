"""The error hierarchy: every failure we raise on purpose is a :class:`CowEnvError`.

Messages name the path, the filesystem and the fix, so that a user never needs a traceback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Optional


def shown(value: object) -> str:
    """A culprit as the user gave it, or its ``repr`` when it holds a newline or another
    control character: a one-line error stays one line whatever the user typed."""
    text = str(value)
    return repr(text) if not text.isprintable() else text


def with_option(message: str, option: str) -> str:
    """``message`` with the front end's own option named where the core says "cache directory"
    (the core knows no flags: the plugin says ``--cowenv-dir``, the command line ``--dir``)."""
    phrase = "cache directory"
    at = message.find(phrase)
    if at < 0:
        return message
    at += len(phrase)
    return f"{message[:at]} ({option}){message[at:]}"


class CowEnvError(Exception):
    """Base class of every error pytest-cowenv raises on purpose."""


class CloneError(CowEnvError):
    """A tree could not be cloned, or an explicit link mode is impossible here.

    ``errno`` is the filesystem's error number (``errno.ENOSPC``, ``errno.EEXIST``, ...) when
    the filesystem refused, None when the link mode itself is impossible here.
    """

    def __init__(self, message: str, errno: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno


class TemplateBuildError(CowEnvError):
    """A template environment could not be built (installer output is in the message)."""


class SpecError(CowEnvError):
    """A requirement, marker keyword or interpreter request is invalid."""


class CacheDirError(CowEnvError):
    """The cache directory is missing, unsafe or unusable."""


def not_ours(path: object, what: str = "file") -> CacheDirError:
    """The error for a symbolic link at the name of a ``what`` ("file" or "folder") of the
    cache: it is not ours, and nothing is written, created or locked through it."""
    return CacheDirError(
        f"{shown(path)}: a symbolic link where pytest-cowenv keeps a {what} of its own; it was "
        "not made by pytest-cowenv and is left alone: remove it, or use another cache directory"
    )


class LockTimeoutError(CowEnvError, TimeoutError):
    """Another process held a template lock for longer than we may wait."""


class CommandError(CowEnvError, subprocess.CalledProcessError):
    """A command run inside an environment exited non-zero."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, list(cmd), stdout, stderr)

    def __str__(self) -> str:
        command = " ".join(str(part) for part in self.cmd)
        return (
            f"command {command!r} exited with {self.returncode}\n"
            f"--- stdout ---\n{self.stdout or ''}"
            f"--- stderr ---\n{self.stderr or ''}"
        )


class CowEnvWarning(UserWarning):
    """Emitted once per filesystem pair when ``auto`` falls back to plain copies."""


class UnsafeRemovalError(CowEnvError, OSError):
    """A deletion was refused: the path is outside the cache, reached through a symlink, or
    holds another mount. Also an ``OSError`` (with its errno), as every failed deletion is."""
