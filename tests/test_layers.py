"""The import graph of ``src/pytest_cowenv``: no cycles, no module importing a layer above its
own, and ``clone/`` used through its ``__init__`` only. ``docs/architecture.md`` draws the same
rules; a new module goes into :data:`LAYERS` and onto that drawing.

Imports are read with :mod:`ast`, those inside functions included (a lazy import is still a
dependency); imports under ``if TYPE_CHECKING:`` are not dependencies. ``from . import
__version__`` names the package itself, whose ``__init__`` imports nothing at run time: it is
not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PACKAGE = "pytest_cowenv"

# Lowest first. A module may import modules of its own layer or of a lower one, never higher.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "leaves",  # import nothing of ours but other leaves
        {
            "errors",
            "_defaults",
            "_fstype",
            "_owner",
            "_inotify",
            "_venv",
            "_relocate",
            "_bytecode",
            "_groups",
            "_reqfile",
            "_names",
            "marker",
        },
    ),
    ("clone engine", {"clone"}),  # the package and its private modules
    (
        "filesystem probes, installers, specs, cache layout",
        {
            "fs",
            "_install",
            "spec",
            "_lock",
            "_plan",
            "store",
            "_atomic",
            "_content",
            "generations",
            "_releases",
            "_wheelcache",
        },
    ),
    ("templates and the clone handle", {"template", "_build", "env"}),
    (
        "pool, clean-up, checks, report",
        {"pool", "reuse", "maintenance", "verify", "report", "_coverage"},
    ),
    ("session", {"session"}),
    ("front ends", {"plugin", "matrix", "cli", "__main__"}),
]
# The engine's own white-box tests reach its back-ends directly; nothing else may.
WHITE_BOX = {"test_backends_faked.py", "test_clone_engine.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(child) for child in ast.walk(node))
    return hidden


def imported(
    path: Path, name: Optional[str] = None, modules: frozenset[str] = frozenset()
) -> set[str]:
    """Every module ``path`` imports (absolute dotted names), outside TYPE_CHECKING blocks.
    ``name`` is its own module name, to resolve relative imports; ``from x import y`` is an
    import of ``x.y`` when that is one of ``modules``, else of ``x`` (and, unknown, of both)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden = _type_checking_nodes(tree)
    package = (name or "").split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in modules:
                    found.add(full)
                elif modules:
                    found.add(target)
                else:
                    found.update((target, full))
    return found


def src_graph() -> dict[str, set[str]]:
    """Module → the modules of ours it imports (names without the package prefix)."""
    paths = {module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps = imported(path, name, frozenset(paths)) & set(paths) - {name, PACKAGE}
        graph[name.removeprefix(PACKAGE + ".")] = {d.removeprefix(PACKAGE + ".") for d in deps}
    del graph[PACKAGE]  # the facade: lazy names only, checked by test_public_api
    return graph


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for rank, (_, members) in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(
        f"{module} is in no layer: add it to LAYERS in tests/test_layers.py and to "
        "docs/architecture.md"
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert cycles(src_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for module, deps in sorted(src_graph().items())
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(module)
    ]
    assert upward == []


def _outside_clone() -> list[tuple[str, Path, Optional[str]]]:
    """(shown name, path, module name for relative imports) of every file outside clone/."""
    files: list[tuple[str, Path, Optional[str]]] = [
        (module_name(p), p, module_name(p))
        for p in (SRC / PACKAGE).rglob("*.py")
        if "clone" not in p.relative_to(SRC / PACKAGE).parts[:-1]
    ]
    for folder in ("tests", "benchmarks"):
        files += [
            (str(p.relative_to(REPO)), p, None)
            for p in (REPO / folder).rglob("*.py")
            if p.name not in WHITE_BOX
        ]
    return files


@pytest.mark.parametrize("where", ["src", "tests", "benchmarks"])
def test_clone_is_used_through_its_init_only(where: str) -> None:
    private = [
        f"{shown} imports {dep}"
        for shown, path, name in _outside_clone()
        if shown.startswith(where) or (where == "src" and shown.startswith(PACKAGE))
        for dep in sorted(imported(path, name))
        if dep.startswith(f"{PACKAGE}.clone._")
    ]
    assert private == []
