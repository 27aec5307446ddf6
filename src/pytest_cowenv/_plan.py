"""How a spec is installed: the installer commands, in order, for one template build.

Plain requirements go on the command line, as before. Whatever a requirement file brought
(``--hash`` values, index options, constraints) is written back into files of the build
folder and passed with ``-r``/``-c``, so that pip and uv apply them as they would to the
user's own files (hash-checking mode included). A lock's set is installed without
resolving (``--no-deps``), the locked projects after it. What needs no project's wheel comes
first, so that a build can run it while the wheels are built (see ``_build.build_env``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from ._install import install_command
from ._venv import wheel_requires
from .errors import TemplateBuildError
from .spec import TemplateSpec, find_interpreter


class InstallPlan(NamedTuple):
    """The installer commands of one build, in order: ``first`` install no local project
    (they run while the projects' wheels are built) and are hash-checked (they install the
    same files from any source); ``then(wheels)`` are the rest, given the wheel built from
    each local project directory."""

    first: list[list[str]]
    then: Callable[[Mapping[str, Path]], list[list[str]]]


def install_commands(
    spec: TemplateSpec,
    python: Path,
    work: Path,
    base: Optional[str] = None,
) -> InstallPlan:
    """The commands that fill ``python``'s environment; ``base``: see :func:`install_command`.

    Only commands that would come first anyway go into ``first``: a lock's set and hashed
    requirements, installed before the projects today. Plain requirements and the projects
    are resolved together, in one command, which waits for the wheels."""

    def local(wheels: Mapping[str, Path]) -> list[str]:
        items = []
        for path in spec.local:
            wheel = wheels.get(path)
            item = str(wheel) if wheel is not None else path
            if path == spec.project and spec.extras:
                item += f"[{','.join(spec.extras)}]"
            items.append(item)
        if spec.resolution == "lowest-direct":
            # uv takes a wheel's own dependencies as transitive, where a project's
            # dependencies are what "direct" means to a lower-bounds run (uv sync, tox-uv):
            # they go on the command line beside it.
            for path in spec.local:
                wheel = wheels.get(path)
                if wheel is not None:
                    chosen = spec.extras if path == spec.project else ()
                    items += declared_requirements(wheel, chosen, base, spec.describe())
        return items

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

        def together(wheels: Mapping[str, Path]) -> list[list[str]]:
            items = [*spec.install_order(), *local(wheels)]
            return [install_command(python, items, spec.index, extra, base=base)] if items else []

        return InstallPlan([], together)
    requirements = work / "requirements.txt"
    requirements.write_text("\n".join([*spec.options, *spec.install_order()]) + "\n", "utf-8")
    from_file = [*extra, "-r", str(requirements)] + (["--no-deps"] if spec.locked else [])
    if not hashed:
        return InstallPlan(
            [],
            lambda wheels: [
                install_command(python, local(wheels), spec.index, from_file, base=base)
            ],
        )
    # Hash-checking mode covers every item of a command, and a project built here has no
    # hash to check: it comes second (without deps after a lock, whose set is complete).
    first = (
        [install_command(python, [], spec.index, from_file, base=base)] if spec.requirements else []
    )
    if not spec.local:
        return InstallPlan(first, lambda wheels: [])
    options = work / "options.txt"
    options.write_text("\n".join(spec.options) + "\n", "utf-8")
    then = [*extra, "-r", str(options)] + (["--no-deps"] if spec.locked else [])
    return InstallPlan(
        first, lambda wheels: [install_command(python, local(wheels), spec.index, then, base=base)]
    )


def declared_requirements(
    wheel: Path, extras: Sequence[str], python: Optional[str], what: str
) -> list[str]:
    """What the project built into ``wheel`` requires on the interpreter ``python`` (None:
    this one) with ``extras``: its ``Requires-Dist`` whose markers hold there, without them."""
    from packaging.requirements import Requirement

    from ._lock import target_of

    try:
        declared = [Requirement(line) for line in wheel_requires(wheel)]
    except (OSError, ValueError) as exc:  # InvalidRequirement is a ValueError
        raise TemplateBuildError(
            f"{what}: cannot read the requirements of {wheel.name}: {exc}"
        ) from None
    if not any(req.marker for req in declared):
        return [str(req) for req in declared]
    if python is not None and os.path.realpath(python) == find_interpreter(None).executable:
        python = None  # the running one: no need to ask
    environment, _ = target_of(python, f"{what}: resolution='lowest-direct'")
    out = []
    for req in declared:
        if req.marker is not None:
            if not any(req.marker.evaluate({**environment, "extra": e}) for e in ("", *extras)):
                continue
            req.marker = None
        out.append(str(req))
    return out
