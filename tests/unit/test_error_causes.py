"""Driver errors stay the ``__cause__`` of the errors we raise for them.

The CLIs print one line; a developer reading a traceback (or ``exc.__cause__`` in a test)
still needs the server's error, its SQLSTATE and diagnostics. ``raise … from None`` inside
a handler of a driver error (or of anything wide enough to catch one) would drop them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import psycopg
import pytest

import balsam_mpi
from balsam_mpi.base.errors import ServerError
from balsam_mpi.base.project import Project, ServerInfo

PACKAGE = Path(balsam_mpi.__file__).parent
# What a handler catches when a driver error can reach it.
WIDE = {"Exception", "BaseException", "BalsamError", "DatabaseError", "ServerError"}


def _caught(handler: ast.ExceptHandler) -> set[str]:
    if handler.type is None:
        return {"BaseException"}
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {ast.unparse(k) for k in kinds}


def dropped_causes(source: str) -> list[int]:
    """Lines of ``raise … from None`` in handlers that can catch a driver error."""
    out = []
    for handler in ast.walk(ast.parse(source)):
        if not isinstance(handler, ast.ExceptHandler):
            continue
        caught = _caught(handler)
        if not any(c.startswith("psycopg") or c in WIDE for c in caught):
            continue
        for node in ast.walk(handler):
            if (isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant)
                    and node.cause.value is None):
                out.append(node.lineno)
    return out


def test_no_driver_error_is_dropped() -> None:
    found = {str(p.relative_to(PACKAGE.parent)): lines for p in sorted(PACKAGE.rglob("*.py"))
             if (lines := dropped_causes(p.read_text(encoding="utf-8")))}
    assert not found, f"`from None` drops a driver error: {found}"


def test_the_check_finds_a_dropped_cause() -> None:
    source = ("try:\n    f()\nexcept psycopg.OperationalError as exc:\n"
              "    raise ServerError('x') from None\n"
              "try:\n    f()\nexcept ValueError:\n    raise InputError('y') from None\n")
    assert dropped_causes(source) == [4]


def test_the_superuser_connection_keeps_the_driver_error(tmp_path: Path) -> None:
    from balsam_mpi.dbctl.admin import admin_connect

    info = ServerInfo(host="h", port=1, owner_uid=0, owner_name="o", server_uid=0,
                      server_name="s", group="g", pg_major=16, pg_bindir="/x",
                      superuser="balsam_superuser")
    with pytest.raises(ServerError, match="cannot connect to the server") as raised:
        admin_connect(Project(tmp_path), info)
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)
