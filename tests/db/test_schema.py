"""The schema file and the migrations agree; dbctl's verify finds nothing wrong."""

from __future__ import annotations

import psycopg
import pytest

from balsam_mpi import sql
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import lifecycle, schema


def _fresh_db(project: Project, name: str) -> None:
    info = project.read_server_info()
    with lifecycle.admin_connect(project, info, dbname="postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}" OWNER balsam_objects')


def test_schema_matches_migrations(pg_project: Project) -> None:
    info = pg_project.read_server_info()
    _fresh_db(pg_project, "from_schema")
    _fresh_db(pg_project, "from_migrations")
    with lifecycle.admin_connect(pg_project, info, "from_schema", autocommit=False) as conn:
        schema.install(conn)
        by_schema = schema.catalog(conn)
    with lifecycle.admin_connect(pg_project, info, "from_migrations", autocommit=False) as conn:
        schema.apply_migrations_only(conn)
        by_migrations = schema.catalog(conn)
    assert len(by_schema) > 50
    only_schema = sorted(set(by_schema) - set(by_migrations))
    only_migrations = sorted(set(by_migrations) - set(by_schema))
    assert (only_schema, only_migrations) == ([], []), (
        "schema.sql and migrations/ disagree; run `python tests/db/regen_schema.py`"
    )


def test_install_is_idempotent_and_versioned(pg_project: Project, dbname: str) -> None:
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname, autocommit=False) as conn:
        assert schema.install(conn) == []
        assert schema.applied_versions(conn) == list(range(1, sql.latest_version() + 1))
        conn.rollback()
        assert schema.verify(conn) == []


def test_events_written_in_bulk_for_inserts_and_state_changes(
        pg_project: Project, dbname: str, conn: psycopg.Connection) -> None:
    app_id = conn.execute("INSERT INTO apps (name, command) VALUES ('a', 'true') RETURNING id"
                          ).fetchone()[0]
    conn.execute("INSERT INTO tasks (workflow, app_id, state) SELECT 'w', %s, 'READY' "
                 "FROM generate_series(1, 50)", (app_id,))
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname) as admin:  # as a launcher would
        admin.execute("UPDATE tasks SET state = 'RUNNING', started_at = '2026-01-01T00:00:00Z'")
    conn.execute("UPDATE tasks SET data = '{\"x\": 1}'")  # no state change: no event
    rows = conn.execute("SELECT to_state, count(*), min(at) FROM task_events "
                        "GROUP BY to_state ORDER BY to_state").fetchall()
    states = {str(r[0]): r[1] for r in rows}
    assert states == {"READY": 50, "RUNNING": 50}
    running_at = [r[2] for r in rows if str(r[0]) == "RUNNING"][0]
    assert running_at.year == 2026 and running_at.month == 1


@pytest.mark.parametrize("name", [m.name for m in sql.migrations()])
def test_migration_files_are_named_and_nonempty(name: str) -> None:
    assert name.replace("_", "").isalnum()
