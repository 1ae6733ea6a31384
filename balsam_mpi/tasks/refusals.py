"""The database's refusals as the errors callers tell apart, each one line naming the field.

The change functions and constraints of migrations/0007 refuse with a SQLSTATE that says
why (a missing task, a state that forbids it, another's task, a value past a cap); the
client turns those into ``NotFound`` / ``Conflict`` / ``PermissionDenied`` /
``UsageError`` here. Anything else is left to ``db.translated`` (the generic boundary).
The driver error stays the ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from ..base.errors import BalsamError, Conflict, NotFound, PermissionDenied, UsageError

_LIMIT_SUFFIXES = ("_limit", "_check", "_state")


class BadDependency(UsageError, Conflict):
    """A dependency that would make a cycle, or a task its own parent: bad input (exit 2).
    Still a Conflict, as callers of ``Client.add_dependency`` caught it before."""


def field_of_constraint(name: str) -> str:
    """``tasks_num_nodes_limit`` -> ``num_nodes`` (the constraints of 0007 are named so)."""
    for table in ("tasks_", "apps_", "batch_jobs_"):
        if name.startswith(table):
            name = name[len(table):]
            break
    for suffix in _LIMIT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def refusal(exc: Exception) -> BalsamError | None:
    """Our error for a driver error the database raised on purpose, else None."""
    import psycopg

    if not isinstance(exc, psycopg.Error):
        return None
    text = (str(exc).strip().splitlines() or [""])[0]
    state = exc.sqlstate or ""
    if state == "42501":
        return PermissionDenied(f"not allowed: {text}")
    if state == "P0002":
        return NotFound(text)
    if state in ("55000", "22023"):
        return Conflict(text)
    if state == "23514":  # check_violation: a cap of base/limits.py, or a state change
        constraint = exc.diag.constraint_name
        if constraint:
            return UsageError(f"{field_of_constraint(constraint)}: refused by the database "
                              f"(outside the limits of balsam_mpi/base/limits.py; constraint "
                              f"{constraint})")
        return Conflict(text)
    if state == "23502":  # not_null_violation
        return UsageError(f"{exc.diag.column_name or 'a field'}: must not be null")
    if state in ("22P02", "22003", "22007", "22008"):  # bad text for a type, out of range
        return UsageError(f"a value has the wrong type or is out of range: {text}")
    return None


def dependency_refusal(exc: Exception) -> BalsamError | None:
    """``tasks_add_dependency`` says a cycle, or a task made its own parent, with
    ``invalid_parameter_value``; its other refusals (a missing task, another's, one that
    started) are what :func:`refusal` makes of them."""
    import psycopg

    if isinstance(exc, psycopg.Error) and exc.sqlstate == "22023":
        return BadDependency((str(exc).strip().splitlines() or [""])[0])
    return refusal(exc)


@contextlib.contextmanager
def refusals(mapping: Callable[[Exception], BalsamError | None] = refusal
             ) -> Iterator[None]:
    """Turn the database's deliberate refusals raised inside the block into our errors."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        mine = mapping(exc)
        if mine is None:
            raise
        raise mine from exc
