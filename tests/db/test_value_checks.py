"""A task's document and list caps are checked when those columns are written, not on
every write of the row (migration 0034): a launcher's claim and report, which never write
them, no longer evaluate them; a write of the column past its cap is still refused with
the cap's constraint named, as 0007's CHECK constraints did."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from balsam_mpi.base import limits
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.store import Store
from balsam_mpi.protocol import EndKind, Finished, Started

from .test_claim import add_app, claim, open_lease

ENV = {"OMP_NUM_THREADS": "4", "RUN_MODE": "prod"}
TAGS = {"experiment": "xpcs", "site": "theta"}
# SQL functions of 0007's caps that Postgres calls rather than inlines (they hold a query),
# so track_functions counts them: one call per evaluated cap.
COUNTED = ("env_names_ok", "keys_within")


def _calls(su: psycopg.Connection[Any], at_least: int) -> dict[str, int]:
    """Calls per function of the sessions that have ended (a backend reports its counts
    when it ends: wait for the launcher's, at most 10 s)."""
    deadline = time.monotonic() + 10.0
    while True:
        rows = su.execute("SELECT funcname, calls FROM pg_stat_user_functions").fetchall()
        calls = {str(n): int(c) for n, c in rows}
        if calls.get("launcher_report", 0) >= at_least or time.monotonic() > deadline:
            return calls
        time.sleep(0.1)


def test_a_launchers_writes_evaluate_no_document_cap(
        pg_project: Project, dbname: str, conn: Any, su: Any) -> None:
    app = add_app(conn)
    conn.execute("INSERT INTO tasks (workflow, name, app_id, state, env, tags) "
                 "SELECT 'w', 't', %s, 'READY', %s::jsonb, %s::jsonb "
                 "FROM generate_series(1, 20)", (app, json.dumps(ENV), json.dumps(TAGS)))
    # Sessions opened from here on count their function calls (the two above do not).
    su.execute(f'ALTER DATABASE "{dbname}" SET track_functions = \'all\'')
    su.execute("SELECT pg_stat_reset()")
    with Store.connect(pg_project) as store:
        lease = open_lease(store)
        ids = claim(store, lease, limit=20, capacity=20.0)
        assert len(ids) == 20
        now = time.time()
        # Half as the short task's one write, half as a start and then an end.
        store.report(lease, [Started(i, lease.epoch, now) for i in ids],
                     [Finished(i, lease.epoch, int(EndKind.DONE), 0, now, now + 0.1)
                      for i in ids[:10]])
        store.report(lease, [], [Finished(i, lease.epoch, int(EndKind.DONE), 0, now,
                                          now + 0.1) for i in ids[10:]])
    calls = _calls(su, 2)
    su.execute(f'ALTER DATABASE "{dbname}" RESET track_functions')
    assert calls.get("launcher_report", 0) >= 2, calls  # the counting did count
    assert conn.execute("SELECT count(*) FROM tasks WHERE state = 'JOB_FINISHED'"
                        ).fetchone() == (20,)
    # With 0007's CHECK constraints each of these writes evaluated both caps of every row.
    assert {name: calls.get(name, 0) for name in COUNTED} == dict.fromkeys(COUNTED, 0)


def _ready(conn: Any) -> int:
    app = add_app(conn)
    row = conn.execute("INSERT INTO tasks (workflow, name, app_id, state, env, tags) "
                       "VALUES ('w', 't', %s, 'READY', %s::jsonb, %s::jsonb) RETURNING id",
                       (app, json.dumps(ENV), json.dumps(TAGS))).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("column", "value", "cap"), [
    ("tags", {"k" * (limits.NAME_MAX + 1): "v"}, "tasks_tags_limit"),
    ("data", {"x": "y" * limits.DATA_MAX_BYTES}, "tasks_data_limit"),
])
def test_a_members_edit_past_a_cap_is_refused_naming_it(
        conn: Any, column: str, value: dict[str, Any], cap: str) -> None:
    """The columns a member may UPDATE directly (column grants of 0007)."""
    task = _ready(conn)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        conn.execute(pgsql.SQL("UPDATE tasks SET {} = %s::jsonb WHERE id = %s").format(
            pgsql.Identifier(column)), (json.dumps(value), task))
    assert info.value.diag.constraint_name == cap, str(info.value)
    assert cap in str(info.value)
    row = conn.execute(pgsql.SQL("SELECT {} FROM tasks WHERE id = %s").format(
        pgsql.Identifier(column)), (task,)).fetchone()
    assert row is not None and row[0] == {"tags": TAGS, "data": {}}[column]


@pytest.mark.parametrize(("column", "sql_value", "cap"), [
    ("env", """'{"A=B": "x"}'::jsonb""", "tasks_env_limit"),
    ("params", "jsonb_build_object('x', repeat('y', 262144))", "tasks_params_limit"),
    ("args", "ARRAY['a', NULL]::text[]", "tasks_args_limit"),
    ("input_files", "ARRAY['../../x']::text[]", "tasks_input_files_limit"),
])
def test_any_update_past_a_cap_is_refused_naming_it(
        conn: Any, su: Any, column: str, sql_value: str, cap: str) -> None:
    """Even the superuser's UPDATE: the caps hold for every writer, as the constraints'."""
    task = _ready(conn)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        su.execute(pgsql.SQL("UPDATE tasks SET priority = 1, {} = {} WHERE id = %s").format(
            pgsql.Identifier(column), pgsql.SQL(sql_value)), (task,))
    assert info.value.diag.constraint_name == cap, str(info.value)
    # An UPDATE that names the column but keeps its value, and one that names others,
    # go through.
    su.execute(pgsql.SQL("UPDATE tasks SET {0} = {0}, priority = 2 WHERE id = %s").format(
        pgsql.Identifier(column)), (task,))
    assert conn.execute("SELECT priority FROM tasks WHERE id = %s", (task,)).fetchone() == (2,)
