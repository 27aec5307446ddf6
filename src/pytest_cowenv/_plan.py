"""How a spec is installed: the installer commands, in order, for one template build.

Plain requirements go on the command line, as before. Whatever a requirement file brought
(``--hash`` values, index options, constraints) is written back into files of the build
folder and passed with ``-r``/``-c``, so that pip and uv apply them as they would to the
user's own files (hash-checking mode included). A lock's set is installed without
resolving (``--no-deps``), the locked projects after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from ._install import install_command
from .spec import TemplateSpec


def install_commands(
    spec: TemplateSpec,
    python: Path,
    work: Path,
    wheels: Mapping[str, Path],
    base: Optional[str] = None,
) -> list[list[str]]:
    """The commands that fill ``python``'s environment; ``wheels`` maps each local project
    directory of ``spec`` to the wheel built from it; ``base``: see :func:`install_command`."""
    local: list[str] = []
    for path in spec.local:
        wheel = wheels.get(path)
        item = str(wheel) if wheel is not None else path
        if path == spec.project and spec.extras:
            item += f"[{','.join(spec.extras)}]"
        local.append(item)
    extra: list[str] = []
    if spec.resolution:
        extra += ["--resolution", spec.resolution]
    if spec.exclude_newer:
        extra += ["--exclude-newer", spec.exclude_newer]
    if spec.constraints:
        constraints = work / "constraints.txt"
        constraints.write_text("\n".join(spec.constraints) + "\n", encoding="utf-8")
        extra += ["-c", str(constraints)]
    hashed = spec.locked or any(" --hash=" in r for r in spec.requirements)
    if not (hashed or spec.options):
        items = [*spec.requirements, *local]
        return [install_command(python, items, spec.index, extra, base=base)] if items else []
    requirements = work / "requirements.txt"
    requirements.write_text("\n".join([*spec.options, *spec.requirements]) + "\n", "utf-8")
    from_file = [*extra, "-r", str(requirements)] + (["--no-deps"] if spec.locked else [])
    if not hashed:
        return [install_command(python, local, spec.index, from_file, base=base)]
    # Hash-checking mode covers every item of a command, and a project built here has no
    # hash to check: it comes second (without deps after a lock, whose set is complete).
    commands = (
        [install_command(python, [], spec.index, from_file, base=base)] if spec.requirements else []
    )
    if local:
        options = work / "options.txt"
        options.write_text("\n".join(spec.options) + "\n", "utf-8")
        then = [*extra, "-r", str(options)] + (["--no-deps"] if spec.locked else [])
        commands.append(install_command(python, local, spec.index, then, base=base))
    return commands
