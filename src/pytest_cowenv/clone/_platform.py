"""Choose the platform back-end once, at import."""

from __future__ import annotations

import sys

from ._base import Backend

if sys.platform == "darwin":  # pragma: no cover - macOS
    from ._darwin import DarwinBackend

    BACKEND: Backend = DarwinBackend()
elif sys.platform == "win32":  # pragma: no cover - Windows
    from ._windows import WindowsBackend

    BACKEND: Backend = WindowsBackend()
else:
    from ._linux import LinuxBackend

    BACKEND: Backend = LinuxBackend()
