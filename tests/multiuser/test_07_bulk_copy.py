"""Bulk adds through binary COPY (migrations/0012) as the real UNIX users, on a project
database where members have no temporary-table privilege: the staging table is each
session's own, written only by INSERT/COPY, and the checked move makes the caller the
owner. Every attack fails with the server's one-line refusal and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from .conftest import MEMBER, MEMBER2, OWNER, VIEWER, Runner, one_line
from .test_06_database_attacks import Steps, _cli, _entry, _rows, _world


@pytest.fixture(scope="module")
def staged(mu: Runner, enrolled: Steps) -> dict[str, int]:
    """An app, a task of MEMBER2's, and the stager script where the users can read it."""
    assert mu.project is not None
    target = mu.project.parent / "stager.py"
    shutil.copy(Path(__file__).with_name("stager.py"), target)
    os.chmod(target, 0o644)
    _rows(mu.probe(OWNER, ["INSERT INTO apps (name, command) VALUES ('hello', 'echo') "
                           "ON CONFLICT (name) DO NOTHING"]))
    app = _rows(mu.probe(OWNER, ["SELECT id FROM apps WHERE name = 'hello'"]))[0][0]
    theirs = _rows(mu.probe(MEMBER2, [("INSERT INTO tasks (workflow, app_id, state) VALUES "
                                       "('bulk-theirs', %s, 'READY') RETURNING id",
                                       [app])]))[0][0]
    return {"app": app, "theirs": theirs}


def _owners(mu: Runner, workflow: str) -> list[Any]:
    return _rows(mu.probe(OWNER, [("SELECT owner, count(*) FROM tasks WHERE workflow = %s "
                                   "GROUP BY owner", [workflow])]))


def test_a_members_file_goes_in_through_the_staging_table_as_themselves(
        mu: Runner, staged: dict[str, int]) -> None:
    lines = "".join(json.dumps({"app": "hello", "workflow": "bulk-file", "name": f"t{i}"})
                    + "\n" for i in range(3))
    ok = _cli(mu, MEMBER, "task", "add", "--from-file", "-", stdin=lines)
    assert ok.returncode == 0, ok.stderr
    assert _owners(mu, "bulk-file") == [[MEMBER, 3]]
    bad = lines + json.dumps({"app": "hello", "workflow": "bulk-file", "num_nodes": 0}) + "\n"
    before = _world(mu)
    refused = _cli(mu, MEMBER, "task", "add", "--from-file", "-", stdin=bad)
    line = one_line(refused)
    assert refused.returncode == 2 and "line 4" in line and "num_nodes" in line, line
    assert _world(mu) == before


def test_the_staging_table_is_insert_only_and_cannot_be_shadowed(
        mu: Runner, staged: dict[str, int]) -> None:
    before = _world(mu)
    attacks = {
        # members may not make temporary tables: none of their own to shadow ours
        "CREATE TEMPORARY TABLE task_stage (id bigint)": "42501",
        "SELECT tasks_stage_open(); SELECT * FROM pg_temp.task_stage": "42501",
        "SELECT tasks_stage_open(); UPDATE pg_temp.task_stage SET app_id = 1": "42501",
        "SELECT tasks_stage_open(); DELETE FROM pg_temp.task_stage": "42501",
        "SELECT tasks_stage_open(); TRUNCATE pg_temp.task_stage": "42501",
        "SELECT tasks_stage_open(); ALTER TABLE pg_temp.task_stage ADD COLUMN owner text":
            "42501",
        "SELECT tasks_stage_open(); DROP TABLE pg_temp.task_stage": "42501",
        # no column says who owns a row: the mover does
        "SELECT tasks_stage_open(); INSERT INTO pg_temp.task_stage (id, workflow, app_id, "
        "owner) VALUES (1, 'x', 1, 'someone')": "42703",
        # ids nobody reserved, a first state no new task has, another's task as a child
        "SELECT tasks_stage_open(); INSERT INTO pg_temp.task_stage (id, workflow, app_id) "
        "SELECT 10^12, 'x', id FROM apps WHERE name = 'hello'; "
        "SELECT tasks_add_staged('{}', '{}')": "42501",
        "SELECT tasks_stage_open(); INSERT INTO pg_temp.task_stage (id, workflow, app_id, "
        "state) SELECT tasks_reserve_ids(1), 'x', id, 'RUNNING' FROM apps WHERE name = "
        "'hello'; SELECT tasks_add_staged('{}', '{}')": "23514",
        "SELECT tasks_stage_open(); INSERT INTO pg_temp.task_stage (id, workflow, app_id) "
        "SELECT tasks_reserve_ids(1), 'x', id FROM apps WHERE name = 'hello'; "
        "SELECT tasks_add_staged(ARRAY(SELECT id FROM tasks WHERE workflow = 'bulk-theirs'), "
        "ARRAY[1]::bigint[])": "42501",
    }
    for attack, sqlstate in attacks.items():
        entry = _entry(mu.probe(MEMBER, [attack]))
        assert not entry["ok"] and entry["sqlstate"] == sqlstate, (attack, entry)
        assert "\n" not in entry["error"]
    for attack in ("SELECT tasks_stage_open()", "SELECT tasks_add_staged('{}', '{}')"):
        entry = _entry(mu.probe(VIEWER, [attack]))
        assert not entry["ok"] and entry["sqlstate"] == "42501", (attack, entry)
    assert _world(mu) == before


def test_no_member_reads_moves_or_writes_another_sessions_staged_rows(
        mu: Runner, staged: dict[str, int]) -> None:
    assert mu.project is not None
    stager = mu.popen(MEMBER, [str(mu.venv / "bin" / "python"),
                               str(mu.project.parent / "stager.py"), str(staged["app"])])
    try:
        assert stager.stdout is not None and stager.stdin is not None
        where = json.loads(stager.stdout.readline() or "{}")
        assert "schema" in where, stager.stderr.read() if stager.stderr else ""
        # the schema's name comes from the server (pg_my_temp_schema), not from input
        table = f'"{where["schema"]}".task_stage'
        before = _world(mu)
        for who in (MEMBER2, OWNER):
            for attack in (f"SELECT * FROM {table}",  # noqa: S608
                           f"INSERT INTO {table} (id) VALUES (1)",  # noqa: S608
                           f"DELETE FROM {table}",  # noqa: S608
                           f"COPY {table} TO STDOUT"):
                entry = _entry(mu.probe(who, [attack]))
                assert not entry["ok"] and entry["sqlstate"] in ("42501", "0A000"), (
                    who, attack, entry)
            # another session's move sees only its own (empty) staging table
            assert _rows(mu.probe(who, ["SELECT tasks_add_staged('{}', '{}')"])) == [[0]]
        assert _world(mu) == before
        stager.stdin.write("go\n")
        stager.stdin.flush()
        assert json.loads(stager.stdout.readline()) == {"moved": 1}
        assert stager.wait(timeout=30) == 0
    finally:
        if stager.poll() is None:
            stager.kill()
            stager.wait()
    assert _rows(mu.probe(OWNER, [("SELECT owner FROM tasks WHERE id = %s",
                                   [where["id"]])])) == [[MEMBER]]
