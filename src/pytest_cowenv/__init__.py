"""pytest-cowenv: a real, isolated virtual environment per test, cloned copy-on-write.

Names are imported lazily so that loading the pytest plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "CloneResult": "clone",
    "LinkMode": "clone",
    "clone_tree": "clone",
    "remove_tree": "clone",
    "CacheDirError": "errors",
    "CloneError": "errors",
    "CommandError": "errors",
    "CowEnvError": "errors",
    "CowEnvWarning": "errors",
    "LockTimeoutError": "errors",
    "SpecError": "errors",
    "TemplateBuildError": "errors",
    "FsInfo": "fs",
    "probe": "fs",
    "CowEnv": "env",
    "TemplateSpec": "spec",
    "Template": "template",
    "TemplateCache": "template",
    "versions": "matrix",
    "Versions": "matrix",
}

__all__ = [
    "__version__",
    "CacheDirError",
    "CloneError",
    "CloneResult",
    "CommandError",
    "CowEnv",
    "CowEnvError",
    "CowEnvWarning",
    "FsInfo",
    "LinkMode",
    "LockTimeoutError",
    "SpecError",
    "Template",
    "TemplateBuildError",
    "TemplateCache",
    "TemplateSpec",
    "clone_tree",
    "probe",
    "remove_tree",
    "versions",
    "Versions",
]

if TYPE_CHECKING:
    from .clone import CloneResult, LinkMode, clone_tree, remove_tree
    from .env import CowEnv
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
    from .matrix import Versions, versions
    from .spec import TemplateSpec
    from .template import Template, TemplateCache


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_cowenv' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
