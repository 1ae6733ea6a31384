"""Every SQL statement of the package lives in this folder, loaded by name.

Query files hold blocks that start with ``-- name: some_name``; the text up to the next
such line is the statement. Names are unique across files (checked at load). The schema
(``schema.sql``) and the numbered ``migrations/`` are read whole.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import NamedTuple

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_NOT_QUERIES = {"schema.sql"}


class Migration(NamedTuple):
    version: int
    name: str
    text: str


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def parse_queries(text: str, source: str) -> dict[str, str]:
    """Split one query file into {name: statement}; text before the first name is a header."""
    found: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match.group(1)
        if not body:
            raise ValueError(f"{source}: query {name!r} is empty")
        if name in found:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        found[name] = body
    return found


@cache
def all_queries() -> dict[str, str]:
    merged: dict[str, str] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql") or entry.name in _NOT_QUERIES:
            continue
        for name, body in parse_queries(entry.read_text(encoding="utf-8"), entry.name).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined in two files")
            merged[name] = body
    return merged


def query(name: str) -> str:
    """The statement called ``name`` (KeyError names it if there is none)."""
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no SQL query named {name!r} in balsam_mpi/sql") from None


def schema() -> str:
    return _read("schema.sql")


@cache
def migrations() -> tuple[Migration, ...]:
    folder = resources.files(__name__).joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
            )
    found.sort()
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 0001, 0002, … without gaps: {versions}")
    return tuple(found)


def latest_version() -> int:
    return len(migrations())
