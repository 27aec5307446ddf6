"""Build tiny wheels in-process, so tests install offline, fast and deterministically."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_wheel(
    directory: Path,
    name: str,
    version: str = "1.0",
    *,
    requires: Sequence[str] = (),
    modules: Mapping[str, str] | None = None,
    scripts: Mapping[str, str] | None = None,
) -> Path:
    """Write ``name-version-py3-none-any.whl`` into ``directory`` and return its path.

    ``modules`` maps a file path inside the wheel (``pkg/__init__.py``) to its text; by
    default one module ``<name>.py`` defines ``VERSION``. ``scripts`` maps a console-script
    name to ``module:function``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    modules = modules or {f"{dist}.py": f"VERSION = {version!r}\n"}
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {path: text.encode() for path, text in modules.items()}
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    files[f"{info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: pytest-cowenv-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    if scripts:
        lines = ["[console_scripts]", *(f"{k} = {v}" for k, v in scripts.items())]
        files[f"{info}/entry_points.txt"] = ("\n".join(lines) + "\n").encode()
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name_in_zip, data in files.items():
            info_z = zipfile.ZipInfo(name_in_zip, date_time=(2020, 1, 1, 0, 0, 0))
            info_z.external_attr = 0o644 << 16
            zf.writestr(info_z, data)
    return path


def make_alpha(directory: Path, version: str) -> Path:
    """``alpha`` at ``version``: a module that knows its version and a console script
    ``alpha`` that prints it."""
    return make_wheel(
        directory,
        "alpha",
        version,
        modules={
            "alpha/__init__.py": f"VERSION = {version!r}\n",
            "alpha/cli.py": "import alpha\n\ndef main():\n    print('alpha', alpha.VERSION)\n",
        },
        scripts={"alpha": "alpha.cli:main"},
    )


def standard_wheelhouse(directory: Path) -> Path:
    """A small offline index: ``alpha`` 1.0/2.0 (console script ``alpha``), ``beta`` (needs
    alpha), ``gamma`` (a package with a data file)."""
    for version in ("1.0", "2.0"):
        make_alpha(directory, version)
    make_wheel(
        directory,
        "beta",
        "1.0",
        requires=["alpha>=1.0"],
        modules={"beta.py": "import alpha\nVERSION = '1.0'\n"},
    )
    make_wheel(
        directory,
        "gamma",
        "0.5",
        modules={"gamma/__init__.py": "VERSION = '0.5'\n", "gamma/data.txt": "hello\n"},
    )
    return directory
