"""Bulk adds through binary COPY (migrations/0012): the session's staging table and the
checked move ``tasks_add_staged``, as login roles (``SET SESSION AUTHORIZATION``, so
session_user is the role), and the writer's refusals under the input's own name.

The multi-user tier (tests/multiuser/test_07_bulk_copy.py) repeats the attacks as real
UNIX users on a project database where members have no temporary-table privilege.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from balsam_mpi import Client
from balsam_mpi.base.errors import InputError
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import lifecycle
from balsam_mpi.tasks import writer

_n = itertools.count()
MOVE = "SELECT tasks_add_staged(%s::bigint[], %s::bigint[])"


@pytest.fixture()
def su(pg_project: Project, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname) as c:
        # As on a project's own database (0002): nobody but the owner of the database
        # (balsam_objects) may make temporary tables. A test copy starts with Postgres'
        # default, TEMP for PUBLIC.
        c.execute(pgsql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(
            pgsql.Identifier(dbname)))
        yield c


@pytest.fixture()
def su2(pg_project: Project, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname) as c:
        yield c


@pytest.fixture()
def roles(su: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    tag = f"{os.getpid()}_{next(_n)}"
    made = {"alice": "balsam_member", "bob": "balsam_member", "vera": "balsam_viewer"}
    names = {k: f"s_{k}_{tag}" for k in made}
    for key, group in made.items():
        su.execute(pgsql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            pgsql.Identifier(names[key]), pgsql.Identifier(group)))
    yield names
    su.execute("RESET SESSION AUTHORIZATION")
    for name in names.values():
        su.execute(pgsql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
            pgsql.Identifier(name), pgsql.Identifier(name)))


@contextlib.contextmanager
def as_role(c: psycopg.Connection[Any], role: str) -> Iterator[psycopg.Connection[Any]]:
    c.execute(pgsql.SQL("SET SESSION AUTHORIZATION {}").format(pgsql.Identifier(role)))
    try:
        yield c
    finally:
        c.execute("RESET SESSION AUTHORIZATION")


@pytest.fixture()
def app_id(su: psycopg.Connection[Any]) -> int:
    row = su.execute("INSERT INTO apps (name, command) VALUES ('echo', 'echo') "
                     "RETURNING id").fetchone()
    assert row is not None
    return int(row[0])


def _world(su: psycopg.Connection[Any]) -> list[Any]:
    return su.execute("SELECT (SELECT json_agg(t ORDER BY id) FROM tasks t), "
                      "(SELECT json_agg(d ORDER BY child_id) FROM task_deps d), "
                      "(SELECT count(*) FROM task_events)").fetchall()


def _stage(c: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> None:
    """Rows into the session's staging table by binary COPY, as the writer sends them."""
    columns = writer.stage_columns(rows)
    c.execute("SELECT tasks_stage_open()")
    statement = pgsql.SQL("COPY pg_temp.task_stage ({}) FROM STDIN (FORMAT BINARY)").format(
        pgsql.SQL(", ").join(map(pgsql.Identifier, columns)))
    with c.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types([writer.STAGE_TYPES[k] for k in columns])
        for row in writer.stage_rows(rows, [r["id"] for r in rows], columns):
            copy.write_row(row)


def _refused(c: psycopg.Connection[Any], rows: list[dict[str, Any]],
             deps: tuple[list[int], list[int]] = ([], [])) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info, c.transaction():
        _stage(c, rows)
        c.execute(MOVE, deps)
    return info.value


def _reserve(c: psycopg.Connection[Any], n: int) -> int:
    row = c.execute("SELECT tasks_reserve_ids(%s)", (n,)).fetchone()
    assert row is not None
    return int(row[0])


def test_staged_rows_become_the_callers_tasks_and_nothing_stays_staged(
        su: psycopg.Connection[Any], roles: dict[str, str], app_id: int) -> None:
    with as_role(su, roles["alice"]) as c:
        with c.transaction():
            first = _reserve(c, 2)
            _stage(c, [{"id": first, "workflow": "w", "app_id": app_id, "params": {"a": 1}},
                       {"id": first + 1, "workflow": "w", "app_id": app_id,
                        "args": ["x", "y"], "tags": {"k": "v"}, "node_packing_count": 4}])
            assert c.execute(MOVE, ([], [])).fetchone() == (2,)
            # moved and emptied: a second move in the transaction finds nothing
            assert c.execute(MOVE, ([], [])).fetchone() == (0,)
        # staged but never moved: gone at commit (ON COMMIT DELETE ROWS)
        with c.transaction():
            _stage(c, [{"id": _reserve(c, 1), "workflow": "left", "app_id": app_id}])
        with c.transaction():
            _reserve(c, 1)
            assert c.execute(MOVE, ([], [])).fetchone() == (0,)
    rows = su.execute("SELECT owner, state::text, params, args, node_packing_count, "
                      "batch_job_id FROM tasks ORDER BY id").fetchall()
    assert rows == [(roles["alice"], "READY", {"a": 1}, [], 1, None),
                    (roles["alice"], "READY", {}, ["x", "y"], 4, None)]
    assert su.execute("SELECT count(*) FROM task_events").fetchone() == (2,)


def test_a_member_may_only_insert_into_the_staging_table(
        su: psycopg.Connection[Any], roles: dict[str, str], app_id: int) -> None:
    with as_role(su, roles["alice"]) as c:
        c.execute("SELECT tasks_stage_open()")
        for attack in ("SELECT * FROM pg_temp.task_stage",
                       "UPDATE pg_temp.task_stage SET app_id = 1",
                       "DELETE FROM pg_temp.task_stage",
                       "TRUNCATE pg_temp.task_stage",
                       "COPY pg_temp.task_stage TO STDOUT",
                       "ALTER TABLE pg_temp.task_stage ADD COLUMN owner text",
                       "DROP TABLE pg_temp.task_stage",
                       "CREATE TEMPORARY TABLE mine (x int)"):
            with pytest.raises(psycopg.Error) as info, c.transaction():
                c.execute(attack)
            assert info.value.sqlstate == "42501", attack
        # No column says who owns a row: the mover is the owner.
        with pytest.raises(psycopg.errors.UndefinedColumn), c.transaction():
            c.execute("INSERT INTO pg_temp.task_stage (id, owner) VALUES (1, %s)",
                      (roles["bob"],))
    with as_role(su, roles["vera"]) as c:
        for attack in ("SELECT tasks_stage_open()", "SELECT tasks_add_staged('{}', '{}')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), c.transaction():
                c.execute(attack)


def test_another_session_neither_reads_nor_moves_my_staged_rows(
        su: psycopg.Connection[Any], su2: psycopg.Connection[Any], roles: dict[str, str],
        app_id: int) -> None:
    with as_role(su, roles["alice"]) as a, as_role(su2, roles["bob"]) as b:
        a.execute("SELECT tasks_stage_open()")  # made by an earlier add, committed
        with a.transaction():
            first = _reserve(a, 1)
            _stage(a, [{"id": first, "workflow": "alice's", "app_id": app_id}])
            row = a.execute("SELECT pg_my_temp_schema()::regnamespace::text").fetchone()
            assert row is not None
            theirs = pgsql.Identifier(row[0], "task_stage")
            for attack in (pgsql.SQL("SELECT * FROM {}").format(theirs),
                           pgsql.SQL("INSERT INTO {} (id) VALUES (1)").format(theirs),
                           pgsql.SQL("DELETE FROM {}").format(theirs)):
                with pytest.raises(psycopg.Error) as info, b.transaction():
                    b.execute(attack)
                assert info.value.sqlstate in ("42501", "0A000"), info.value
            with b.transaction():  # bob's move sees only bob's own (empty) stage
                _reserve(b, 1)
                assert b.execute(MOVE, ([], [])).fetchone() == (0,)
            assert a.execute(MOVE, ([], [])).fetchone() == (1,)
    assert su.execute("SELECT owner FROM tasks").fetchall() == [(roles["alice"],)]


def test_the_move_refuses_ids_rows_and_dependencies_the_client_did_not_get_right(
        su: psycopg.Connection[Any], roles: dict[str, str], app_id: int) -> None:
    done = su.execute("INSERT INTO tasks (workflow, app_id, state) VALUES ('p', %s, "
                      "'JOB_FINISHED') RETURNING id", (app_id,)).fetchone()[0]
    failed = su.execute("INSERT INTO tasks (workflow, app_id, state) VALUES ('p', %s, "
                        "'FAILED') RETURNING id", (app_id,)).fetchone()[0]
    ready = su.execute("INSERT INTO tasks (workflow, app_id, state) VALUES ('p', %s, "
                       "'READY') RETURNING id", (app_id,)).fetchone()[0]
    before = _world(su)
    with as_role(su, roles["alice"]) as c:
        def task(i: int, **kw: Any) -> dict[str, Any]:
            return {"id": i, "workflow": "w", "app_id": app_id, **kw}

        nxt = 0
        # ids nobody reserved (someone's next add would fail on them)
        err = _refused(c, [task(10**9)])
        assert err.sqlstate == "42501" and "not reserved by this transaction" in str(err)

        def in_block(n: int, make: Any) -> psycopg.Error:
            nonlocal nxt
            with pytest.raises(psycopg.Error) as info, c.transaction():
                first = nxt = _reserve(c, n)
                rows, (children, parents) = make(first)
                _stage(c, rows)
                c.execute(MOVE, (children, parents))
            return info.value

        cases = [
            # a new task without parents must start READY
            (1, lambda f: ([task(f, state="RUNNING")], ([], [])),
             "23514", "state: a task without parents starts READY"),
            (1, lambda f: ([task(f, pending_parents=3)], ([], [])),
             "23514", "state: a task without parents starts READY"),
            # a child that is not a row of this add (a stored task)
            (1, lambda f: ([task(f)], ([ready], [f])), "42501", "not a task of this add"),
            # a new parent after its child in id order: could close a cycle
            (2, lambda f: ([task(f, state="AWAITING_PARENTS", pending_parents=1),
                            task(f + 1, state="AWAITING_PARENTS", pending_parents=1)],
                           ([f, f + 1], [f + 1, f])), "22023", "must come before its child"),
            # READY under a parent that has not finished
            (1, lambda f: ([task(f)], ([f], [ready])), "23514",
             "its parents make it AWAITING_PARENTS with 1 parents pending, not READY"),
            # AWAITING with the wrong count (a finished parent does not count)
            (1, lambda f: ([task(f, state="AWAITING_PARENTS", pending_parents=2)],
                           ([f, f], [ready, done])), "23514",
             "AWAITING_PARENTS with 1 parents pending, not AWAITING_PARENTS with 2"),
            # not FAILED under a FAILED parent (fail_with_parents)
            (1, lambda f: ([task(f)], ([f], [failed])), "23514",
             "its parents make it FAILED with 0 parents pending, not READY"),
            # FAILED, naming a task that is not its stopped parent
            (1, lambda f: ([task(f, state="FAILED", failed_by=ready)], ([f], [failed])),
             "23514", "not FAILED with 0 (failed by"),
            # FAILED with nothing stopped above it
            (1, lambda f: ([task(f, state="FAILED", failed_by=done)], ([f], [done])),
             "23514", "its parents make it READY"),
            # a parent that does not exist
            (1, lambda f: ([task(f, state="AWAITING_PARENTS", pending_parents=1)],
                           ([f], [10**12])), "23503", "parents: no task with id 1000000000000"),
        ]
        for n, make, state, text in cases:
            err = in_block(n, make)
            assert err.sqlstate == state and text in str(err), (text, str(err))
            if state != "42501":  # about a staged row: named first
                assert str(err).startswith(f"task {nxt}: "), str(err)
            assert err.diag.message_primary and "\n" not in err.diag.message_primary
    assert _world(su) == before


def test_the_move_accepts_what_the_parents_states_make_and_counts_parents(
        su: psycopg.Connection[Any], roles: dict[str, str], app_id: int) -> None:
    done = su.execute("INSERT INTO tasks (workflow, app_id, state) VALUES ('p', %s, "
                      "'JOB_FINISHED') RETURNING id", (app_id,)).fetchone()[0]
    failed = su.execute("INSERT INTO tasks (workflow, app_id, state) VALUES ('p', %s, "
                        "'FAILED') RETURNING id", (app_id,)).fetchone()[0]
    with as_role(su, roles["alice"]) as c, c.transaction():
        f = _reserve(c, 4)
        _stage(c, [
            {"id": f, "workflow": "w", "app_id": app_id},  # parent of f+1 and f+3
            {"id": f + 1, "workflow": "w", "app_id": app_id, "state": "AWAITING_PARENTS",
             "pending_parents": 1},  # under f (new) and done
            {"id": f + 2, "workflow": "w", "app_id": app_id, "state": "FAILED",
             "failed_by": failed, "state_message": "upstream"},
            {"id": f + 3, "workflow": "w", "app_id": app_id, "fail_with_parents": False,
             "state": "AWAITING_PARENTS", "pending_parents": 1},  # f pending, failed done
        ])
        c.execute(MOVE, ([f + 1, f + 1, f + 2, f + 3, f + 3],
                         [f, done, failed, f, failed]))
    states = su.execute("SELECT id - %s, state::text, pending_parents, failed_by "
                        "FROM tasks WHERE owner = %s ORDER BY id",
                        (f, roles["alice"])).fetchall()
    assert states == [(0, "READY", 0, None), (1, "AWAITING_PARENTS", 1, None),
                      (2, "FAILED", 0, failed), (3, "AWAITING_PARENTS", 1, None)]
    assert su.execute("SELECT count(*) FROM task_deps").fetchone() == (5,)


# -- the writer: a refusal of the database under the input's own name ---------------------
@pytest.fixture()
def hello(conn: psycopg.Connection) -> None:
    with Client() as c:
        c.add_app("hello", "echo hello {who}")


def test_a_database_refusal_names_the_input_and_the_field(
        pg_project: Project, hello: None, conn: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the client's own checks would catch first, with those checks out of the way:
    the database is the last line, and its refusal still names the line and the field."""
    labels = ["tasks.jsonl line 1", "tasks.jsonl line 2", "tasks.jsonl line 3"]
    real = writer.validate.check_task

    def lax(raw: Any, apps: Any) -> dict[str, Any]:
        task = real({k: v for k, v in raw.items() if k != "num_nodes"}, apps)
        if "num_nodes" in raw:
            task["num_nodes"] = raw["num_nodes"]
        return task

    monkeypatch.setattr(writer.validate, "check_task", lax)
    batch = [{"app": "hello", "workflow": "w", "params": {"who": str(i)}} for i in range(3)]
    batch[1]["num_nodes"] = 0
    with Client() as c, pytest.raises(InputError) as info:
        c.add_tasks(batch, labels=labels)
    assert str(info.value).startswith("tasks.jsonl line 2: num_nodes: refused by the "
                                      "database"), str(info.value)
    # ids handed out in input order although a child comes first: the database refuses
    monkeypatch.setattr(writer.validate, "check_task", real)
    monkeypatch.setattr(writer, "ids_in_order",
                        lambda plan, first: [first + i for i in range(len(plan.order))])
    dag = [{"app": "hello", "workflow": "w", "params": {"who": "c"}, "parents": ["p"]},
           {"app": "hello", "workflow": "w", "params": {"who": "p"}, "key": "p"}]
    with Client() as c, pytest.raises(InputError) as info:
        c.add_tasks(dag, labels=labels[:2])
    assert str(info.value).startswith("tasks.jsonl line 1: parents: task "), str(info.value)
    assert "must come before its child" in str(info.value)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_ids_go_to_parents_first_and_chunks_are_all_or_nothing(
        pg_project: Project, hello: None, conn: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with Client() as c:
        ids = c.add_tasks([
            {"app": "hello", "workflow": "w", "params": {"who": "c"}, "parents": ["b"]},
            {"app": "hello", "workflow": "w", "params": {"who": "b"}, "key": "b",
             "parents": ["a"]},
            {"app": "hello", "workflow": "w", "params": {"who": "a"}, "key": "a"}])
    assert ids[2] < ids[1] < ids[0]
    # several chunks, a bad task in the last: nothing of the earlier chunks stays
    monkeypatch.setattr(writer, "FIRST_CHUNK", 2)
    monkeypatch.setattr(writer, "CHUNK", 3)
    batch = [{"app": "hello", "workflow": "x", "params": {"who": str(i)}} for i in range(9)]
    batch[8] = {"app": "hello", "workflow": "x"}
    with Client() as c, pytest.raises(InputError, match=r"^task #9: params: app 'hello' "
                                                        r"needs a value for \{who\}$"):
        c.add_tasks(batch)
    assert conn.execute("SELECT count(*) FROM tasks WHERE workflow = 'x'").fetchone() == (0,)
    with Client() as c:
        assert len(c.add_tasks(batch[:8])) == 8
    assert conn.execute("SELECT count(*) FROM tasks WHERE workflow = 'x'").fetchone() == (8,)
