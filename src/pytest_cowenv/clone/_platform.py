"""Choose the platform back-end once, at import."""

from __future__ import annotations

import sys

from ._base import Backend

BACKEND: Backend
if sys.platform == "darwin":  # pragma: no cover - macOS
    from ._darwin import DarwinBackend

    BACKEND = DarwinBackend()
elif sys.platform == "win32":  # pragma: no cover - Windows
    from ._windows import WindowsBackend

    BACKEND = WindowsBackend()
else:
    from ._linux import LinuxBackend

    BACKEND = LinuxBackend()
