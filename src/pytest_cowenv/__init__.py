"""pytest-cowenv: a real, isolated virtual environment per test, cloned copy-on-write."""

from __future__ import annotations

from .clone import CloneResult, LinkMode, clone_tree, remove_tree
from .errors import (
    CacheDirError,
    CloneError,
    CommandError,
    CowEnvError,
    CowEnvWarning,
    LockTimeoutError,
    SpecError,
    TemplateBuildError,
)
from .fs import FsInfo, probe

__version__ = "0.1.0.dev0"

__all__ = [
    "CacheDirError",
    "CloneError",
    "CloneResult",
    "CommandError",
    "CowEnvError",
    "CowEnvWarning",
    "FsInfo",
    "LinkMode",
    "LockTimeoutError",
    "SpecError",
    "TemplateBuildError",
    "__version__",
    "clone_tree",
    "probe",
    "remove_tree",
]
