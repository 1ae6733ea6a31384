"""Whether the roles of an ``--owner`` filter can own any task of the project.

A launcher (or a batch job ``submit`` queues) whose ``--owner`` names a role no task can
have claims nothing for its whole allocation, with no word of why: a misspelt name looks
exactly like a quiet queue. So the launcher and ``submit`` ask the database first, and
refuse such a name in one line (exit 2) before anything is written. A role counts when
it is a member now (it may add tasks at any time, so a persistent launcher may wait for
them) or when it owns a task (a dropped member's tasks stay, and may be drained).

Filters that only read (``task ls --owner``, ``report --owner``) stay legal with a name
that matches nothing: an empty answer is an honest one. ``report`` says so on stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import sql
from ..base import db, values
from ..base.errors import UsageError

if TYPE_CHECKING:
    import psycopg


def unknown_owners(conn: psycopg.Connection[Any], owners: Sequence[str]) -> list[str]:
    """The names in ``owners`` that are no member's role and own no task, in order."""
    if not owners:
        return []
    with db.translated():
        rows = conn.execute(sql.query("owners_unknown"), {"owners": list(owners)}).fetchall()
    return [str(r[0]) for r in rows]


def refusal(name: str, flag: str = "--owner") -> UsageError:
    return UsageError(f"{flag} {values.show(name)}: no member of this project has that role "
                      "and no task is owned by it, so a launcher would claim nothing (a "
                      "misspelt name? roles are the members' account names)")


def check_owners(conn: psycopg.Connection[Any], owners: Sequence[str],
                 flag: str = "--owner") -> None:
    """Raise, naming the first, when a role of ``owners`` can own no task."""
    unknown = unknown_owners(conn, owners)
    if unknown:
        raise refusal(unknown[0], flag)
