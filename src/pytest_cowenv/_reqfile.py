"""Requirement and constraint files (``-r file``, ``-c file``) as pip and uv read them.

A file is read into plain data: requirements (with their ``--hash`` values), constraints,
local paths, and the index options that both pip and uv accept inside a file. What neither
honours the same way is refused with one line naming the file, the line and the fix.
Leaf module: imports only ``packaging`` and ``errors``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

from .errors import SpecError

# `-r file`, `-rfile`, `--requirement file`, `--requirement=file`; the same for -c.
_FILE_ITEM = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s*=\s*|\s+|(?<=^-[rc]))(\S.*)$")
# Options that pip and uv both honour inside a requirements file, passed on as written
# (a relative --find-links directory is taken from the file's folder, as pip does).
_INDEX_OPTIONS = {
    "-i": "--index-url",
    "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "-f": "--find-links",
    "--find-links": "--find-links",
}
_FLAG_OPTIONS = {"--no-index", "--require-hashes"}
_HASH = re.compile(r"\s--hash[=\s]\s*(\S+)")
_COMMENT = re.compile(r"(^|\s+)#.*$")


def file_item(text: str) -> Optional[tuple[str, str]]:
    """``("-r", path)`` or ``("-c", path)`` if ``text`` names a requirements or constraints
    file, else None."""
    match = _FILE_ITEM.match(text.strip())
    if match is None:
        return None
    flag = "-r" if match.group(1) in ("-r", "--requirement") else "-c"
    return flag, match.group(2).strip()


class ReadFiles:
    """Everything a set of requirement files said, normalised by the caller."""

    def __init__(self) -> None:
        self.requirements: list[tuple[str, tuple[str, ...]]] = []  # + hashes
        self.constraints: list[str] = []
        self.local: list[tuple[str, Path]] = []  # (as written, where)
        self.options: list[str] = []  # "--index-url URL", "--no-index", ...
        self.sources: dict[str, str] = {}  # real path -> sha256 of content

    def read(self, flag: str, given: str, base: Path) -> None:
        """Read ``given`` (relative to ``base``) as a requirements (``-r``) or constraints
        (``-c``) file, following the files it names."""
        self._read(flag, given, base, ())

    def _read(self, flag: str, given: str, base: Path, chain: tuple[Path, ...]) -> None:
        path = (base / os.path.expanduser(given)).resolve()
        where = f"{flag} {given}" + (f" (in {chain[-1]})" if chain else "")
        if path in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(path) :], path))
            raise SpecError(f"{where}: the requirement files include each other ({cycle})")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SpecError(f"{where}: no such file ({path})") from None
        except OSError as exc:
            raise SpecError(f"{where}: cannot read {path} ({exc.strerror})") from None
        self.sources[str(path)] = hashlib.sha256(data).hexdigest()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SpecError(f"{where}: {path} is not UTF-8 text") from None
        for lineno, line in _logical_lines(text):
            self._line(flag, line, f"{path}:{lineno}", path, (*chain, path))

    def _line(self, flag: str, line: str, at: str, path: Path, chain: tuple[Path, ...]) -> None:
        nested = file_item(line)
        if nested is not None:
            # A -r inside a constraints file adds constraints; a -c anywhere adds constraints.
            self._read("-c" if "-c" in (flag, nested[0]) else "-r", nested[1], path.parent, chain)
            return
        if line.startswith("-"):
            self._option(line, at, path)
            return
        hashes = tuple(sorted(m.group(1) for m in _HASH.finditer(" " + line)))
        requirement = _HASH.sub("", " " + line).strip()
        if not _looks_like_path(requirement):
            _check_requirement(requirement, at)
        if flag == "-c":
            if hashes:
                raise SpecError(f"{at}: --hash in a constraints file; put hashes in a -r file")
            self.constraints.append(requirement)
        elif _looks_like_path(requirement):
            if hashes:
                raise SpecError(f"{at}: --hash on a local path; hashes need a pinned name")
            self.local.append((requirement, path.parent / os.path.expanduser(requirement)))
        else:
            self.requirements.append((requirement, hashes))

    def _option(self, line: str, at: str, path: Path) -> None:
        name, value = _split_option(line)
        if name in ("-e", "--editable"):
            if not value:
                raise SpecError(f"{at}: {name} needs a path")
            # Installed like project=: a wheel built from the sources, not an editable install.
            self.local.append((value, path.parent / os.path.expanduser(value)))
        elif name in _INDEX_OPTIONS:
            if not value:
                raise SpecError(f"{at}: {name} needs a value")
            canonical = _INDEX_OPTIONS[name]
            if canonical == "--find-links" and "://" not in value:
                value = str((path.parent / os.path.expanduser(value)).resolve())
            self.options.append(f"{canonical} {value}")
        elif name in _FLAG_OPTIONS and not value:
            self.options.append(name)
        else:
            raise SpecError(
                f"{at}: option {name} is not supported in a cowenv spec (only -r, -c, -e, "
                "--hash, --index-url, --extra-index-url, --find-links, --no-index, "
                "--require-hashes); remove it or give it to pip/uv through PIP_*/UV_* variables"
            )


def _check_requirement(text: str, at: str) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(text)
    except InvalidRequirement as exc:
        why = str(exc).splitlines()[0]
        raise SpecError(f"{at}: {text!r} is an invalid requirement ({why})") from None


def _split_option(line: str) -> tuple[str, str]:
    match = re.match(r"^(--?[A-Za-z][\w-]*)(?:\s*=\s*|\s+)?(.*)$", line)
    if match is None:
        return line, ""
    return match.group(1), match.group(2).strip()


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each logical line: comments removed, backslash
    continuations joined, blank lines dropped."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            out.append((start, line))
    if pending.strip():
        out.append((start, pending.strip()))
    return out


def _looks_like_path(text: str) -> bool:
    head = text.split(";")[0].strip()
    if "@" in head:  # `name @ url`: a direct reference, not a path
        return False
    return head.startswith((".", "/", "~")) or head.endswith((".whl", ".tar.gz", ".zip"))
