"""Per-role limits of collaborators' sessions: connections and timeouts (docs/architecture.md §6).

Set on each login role by ``add-user`` (and again by ``init`` / ``migrate`` for roles made
before): Postgres applies ``ALTER ROLE … SET`` only to sessions of that very role, never
through group membership, so they cannot live on ``balsam_member`` / ``balsam_viewer``.

* ``CONNECTION LIMIT`` is enforced by the server: a viewer once opened 395 connections and
  locked everyone out; now one role holds at most its limit, and the superuser keeps its
  reserved slots.
* The timeouts are the session's defaults. They end what an accident leaves behind (a
  forgotten ``BEGIN`` in psql holding locks, a runaway query). Postgres lets any session
  change its own, so they are not what stops a hostile member: that is done by the
  privileges (a viewer can hold no lock anyone waits for; a member's locks on others'
  tasks exist only inside the database's functions; docs/security.md).
* The launcher connects as the same role and lifts ``statement_timeout`` for its own
  connection (launcher/store.py): its lease sweeps and bulk reports are its own long work.

The owner's everyday role gets none of these: the owner can end any session anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg import sql as pgsql

from .. import sql


@dataclass(frozen=True)
class RoleLimits:
    connections: int
    statement_timeout: str
    lock_timeout: str
    idle_in_transaction_session_timeout: str

    def settings(self) -> dict[str, str]:
        return {"statement_timeout": self.statement_timeout,
                "lock_timeout": self.lock_timeout,
                "idle_in_transaction_session_timeout":
                    self.idle_in_transaction_session_timeout}


# A member runs launchers (two connections per batch job's leader: its claims have their
# own, launcher/calls.py) and the CLI; a viewer
# reads. max_connections is 400 (pgconf.py), 5 of them kept for the superuser.
MEMBER = RoleLimits(connections=64, statement_timeout="15min", lock_timeout="1min",
                    idle_in_transaction_session_timeout="1min")
VIEWER = RoleLimits(connections=16, statement_timeout="2min", lock_timeout="10s",
                    idle_in_transaction_session_timeout="30s")


def for_kind(kind: str) -> RoleLimits:
    return VIEWER if kind == "viewer" else MEMBER


def apply(admin: Connection[Any], role: str, limits: RoleLimits) -> None:
    """As the superuser: set ``limits`` on login role ``role`` (idempotent)."""
    admin.execute(pgsql.SQL(sql.query("access_connection_limit")).format(
        role=pgsql.Identifier(role), limit=pgsql.Literal(limits.connections)))
    for name, value in limits.settings().items():
        admin.execute(pgsql.SQL(sql.query("access_role_setting")).format(
            role=pgsql.Identifier(role), setting=pgsql.Identifier(name),
            value=pgsql.Literal(value)))
