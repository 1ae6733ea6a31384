"""Create the project database, apply the schema, run migrations, verify.

A fresh database gets ``schema.sql`` and every migration recorded as applied; an existing
one gets the migrations it lacks, in order, under an advisory lock so two owners' shells
cannot interleave them. Objects are created as the NOLOGIN role ``balsam_objects``.
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection
from psycopg import sql as pgsql

from .. import sql
from ..base.errors import ServerError
from ..base.project import SCHEMA_DB
from .pgconf import MEMBER_ROLE, OBJECT_ROLE, OWNER_ROLE, VIEWER_ROLE

GROUP_ROLES = (OBJECT_ROLE, OWNER_ROLE, MEMBER_ROLE, VIEWER_ROLE)


def _compose(name: str, **idents: str) -> pgsql.Composed:
    """A DDL statement from sql/, identifiers quoted by psycopg (DDL takes no parameters)."""
    template = pgsql.SQL(sql.query(name))
    return template.format(**{k: pgsql.Identifier(v) for k, v in idents.items()})


def bootstrap(admin: Connection[Any], dbname: str = SCHEMA_DB) -> None:
    """Roles and the database, on a superuser autocommit connection to ``postgres``."""
    for role in GROUP_ROLES:
        if admin.execute(sql.query("role_exists"), {"name": role}).fetchone() is None:
            admin.execute(_compose("create_nologin_role", role=role))
    # Roles are the cluster's, so this grant lives here rather than in a migration; it lets
    # end_hogging_sessions() (0031) end collaborators' sessions that fill a shared queue.
    admin.execute(_compose("grant_signal_backend", role=OBJECT_ROLE))
    if admin.execute(sql.query("database_exists"), {"name": dbname}).fetchone() is None:
        admin.execute(_compose("create_database", db=dbname, owner=OBJECT_ROLE))
        admin.execute(_compose("lock_down_database", db=dbname))


def applied_versions(conn: Connection[Any]) -> list[int]:
    conn.execute(sql.query("migrations_table"))
    return [row[0] for row in conn.execute(sql.query("migrations_applied")).fetchall()]


def install(conn: Connection[Any]) -> list[int]:
    """Bring the database to the latest schema; returns the versions applied now."""
    with conn.transaction():
        conn.execute(sql.query("migration_lock"))
        conn.execute(_compose("set_role", role=OBJECT_ROLE))
        done = applied_versions(conn)
        pending = [m for m in sql.migrations() if m.version not in done]
        if not done:
            conn.execute(sql.schema())
        else:
            for migration in pending:
                conn.execute(migration.text)
        for migration in pending:
            conn.execute(sql.query("migration_record"),
                         {"version": migration.version, "name": migration.name})
        conn.execute(sql.query("reset_role"))
    return [m.version for m in pending]


def apply_migrations_only(conn: Connection[Any]) -> None:
    """Build the schema from the migrations alone (what the agreement test compares)."""
    with conn.transaction():
        conn.execute(_compose("set_role", role=OBJECT_ROLE))
        applied_versions(conn)
        for migration in sql.migrations():
            conn.execute(migration.text)
            conn.execute(sql.query("migration_record"),
                         {"version": migration.version, "name": migration.name})
        conn.execute(sql.query("reset_role"))


def verify(conn: Connection[Any]) -> list[str]:
    """Problems found (empty when all is well): schema version, roles, instance record."""
    problems: list[str] = []
    latest = sql.latest_version()
    done = applied_versions(conn)
    conn.rollback()
    missing = [v for v in range(1, latest + 1) if v not in done]
    if missing:
        problems.append(f"migrations not applied: {missing} (run `balsam-dbctl migrate`)")
    newer = [v for v in done if v > latest]
    if newer:
        problems.append(f"the database has migrations {newer} this balsam_mpi does not know: "
                        "upgrade the package")
    for role in GROUP_ROLES:
        if conn.execute(sql.query("role_exists"), {"name": role}).fetchone() is None:
            problems.append(f"role {role} is missing (run `balsam-dbctl migrate`)")
    try:
        if conn.execute(sql.query("instance_check")).fetchone() is None:
            problems.append("no instance record (run `balsam-dbctl restart`)")
    except Exception as exc:
        raise ServerError(f"cannot read the instance record: {exc}") from exc
    conn.rollback()
    return problems


def catalog(conn: Connection[Any]) -> list[tuple[str, str, str]]:
    rows = conn.execute(sql.query("catalog_snapshot")).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]
