"""The database refuses labels with control characters from a member who skips the client
(migrations/0023): a raw INSERT, a raw UPDATE of tags, `tasks_modify`, a staged add. A row
stored before the rule keeps working: only a label that changes is checked, so a launcher
or an edit of another column never trips on an old name.

As test_checked_writes.py: roles made for the test, ``SET SESSION AUTHORIZATION``.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from balsam_mpi.cli import cli

from .test_checked_writes import _app, _error, as_role, roles, su  # noqa: F401

Conn = psycopg.Connection[Any]
HOSTILE = "n\x1b]0;owned\x07"


def _insert(conn: Conn, app_id: int, workflow: str = "w", name: str = "",
            tags: str = "{}") -> int:
    row = conn.execute("INSERT INTO tasks (workflow, name, tags, app_id, state) "
                       "VALUES (%s, %s, %s::jsonb, %s, 'READY') RETURNING id",
                       (workflow, name, tags, app_id)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("field", "value"), [
    ("workflow", "w\nforged"), ("name", HOSTILE), ("name", "rtl\u202eevil"),
    ("name", "csi\u009b2J"), ("tags", '{"k\\u001b": "v"}'), ("tags", '{"k": "v\\r"}'),
    ("name", "arabic\u061cmark"), ("tags", '{"k": "v\u061c"}')])
def test_a_members_raw_insert_with_a_control_character_is_refused(
        su: Conn, roles: dict[str, str], field: str, value: str) -> None:  # noqa: F811
    app_id = _app(su)
    with as_role(su, roles["alice"]) as conn:
        err = _error(conn, "INSERT INTO tasks (workflow, name, tags, app_id, state) "
                           "VALUES (%s, %s, %s::jsonb, %s, 'READY')",
                     value if field == "workflow" else "w",
                     value if field == "name" else "", value if field == "tags" else "{}",
                     app_id)
    assert isinstance(err, psycopg.errors.CheckViolation), err
    assert f"{field}: contains a control character" in str(err)


def test_raw_tag_updates_and_modify_are_checked(su: Conn, roles: dict[str, str]  # noqa: F811
                                                ) -> None:
    app_id = _app(su)
    with as_role(su, roles["alice"]) as conn:
        task = _insert(conn, app_id, name="fine", tags='{"k": "v"}')
        err = _error(conn, "UPDATE tasks SET tags = '{\"k\": \"v\\u202e\"}' WHERE id = %s",
                     task)
        assert isinstance(err, psycopg.errors.CheckViolation), err
        err = _error(conn, "SELECT * FROM tasks_modify(ARRAY[%s]::bigint[], %s::jsonb)",
                     task, '{"name": "x\\u0007y"}')
        assert "name: contains a control character" in str(err)
        conn.execute("SELECT * FROM tasks_modify(ARRAY[%s]::bigint[], %s::jsonb)",
                     (task, '{"name": "Résumé 日本 👩\u200d🔬"}'))
        row = conn.execute("SELECT name, tags FROM tasks WHERE id = %s", (task,)).fetchone()
        # An escaped quote or backslash makes tags suspect to the quick test; the full
        # check lets them through.
        quoted = {"k\\\"": "a\"b\\c", "n": [1, "\u00e9"]}
        other = _insert(conn, app_id, tags=json.dumps(quoted))
        back = conn.execute("SELECT tags FROM tasks WHERE id = %s", (other,)).fetchone()
    assert row == ("Résumé 日本 👩\u200d🔬", {"k": "v"})
    assert back == (quoted,)


def test_a_row_stored_before_the_rule_keeps_working(su: Conn, roles: dict[str, str]  # noqa: F811
                                                     ) -> None:
    app_id = _app(su)
    with as_role(su, roles["alice"]) as conn:
        task = _insert(conn, app_id, name="old")
    # As a row written before migration 0023: the superuser plants the label with the
    # row's ordinary triggers off (its state does not change).
    su.execute("SET session_replication_role = replica")
    su.execute("UPDATE tasks SET name = %s, tags = %s::jsonb WHERE id = %s",
               (HOSTILE, '{"k\\u001b": 1}', task))
    su.execute("RESET session_replication_role")
    with as_role(su, roles["alice"]) as conn:
        conn.execute("UPDATE tasks SET priority = 5, data = '{\"a\": 1}' WHERE id = %s",
                     (task,))
        conn.execute("SELECT * FROM tasks_modify(ARRAY[%s]::bigint[], %s::jsonb)",
                     (task, '{"priority": 7, "num_nodes": 1}'))
    su.execute("UPDATE tasks SET state = 'RUNNING' WHERE id = %s", (task,))
    row = su.execute("SELECT name, priority, state::text FROM tasks WHERE id = %s",
                     (task,)).fetchone()
    assert row == (HOSTILE, 7, "RUNNING")


def test_the_cli_refuses_it_in_one_line_and_writes_nothing(dbname: str, conn: Conn) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["app", "add", "hello", "--command", "echo hi"],
                       catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    result = runner.invoke(cli, ["task", "add", "--app", "hello", "--workflow", "w",
                                 "--name", HOSTILE], catch_exceptions=False,
                           prog_name="balsam-mpi")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("balsam-mpi: error: name: contains the control character "
                               "\\x1b (character 2)"), lines
    assert "\x1b" not in result.output
    assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
