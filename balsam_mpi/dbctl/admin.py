"""The database superuser's connection: the owner's way in, over the project socket.

Every owner command that changes roles, the schema or the server (``lifecycle``,
``access``, ``prune``, the test suite's database copies) connects through here; peer
authentication on the socket means only the owner's OS account can.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..base.errors import ServerError
from ..base.project import SCHEMA_DB, Project, ServerInfo


def admin_connect(project: Project, info: ServerInfo, dbname: str = SCHEMA_DB,
                  autocommit: bool = True) -> psycopg.Connection[Any]:
    """The database superuser over the project socket (peer; only the owner can)."""
    try:
        return psycopg.connect(
            host=str(project.run_dir), port=info.port, user=info.superuser, dbname=dbname,
            requirepeer=info.server_name, autocommit=autocommit, connect_timeout=10,
            application_name="balsam-dbctl",
        )
    except psycopg.OperationalError as exc:
        raise ServerError(f"cannot connect to the server as {info.superuser}: "
                          f"{str(exc).strip().splitlines()[0]}") from exc
