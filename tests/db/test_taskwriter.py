"""TaskWriter: the one writer of adds, over the client's connection or the leader's."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from balsam_mpi.base import db
from balsam_mpi.base.errors import InputError
from balsam_mpi.base.project import Project
from balsam_mpi.launcher import adds
from balsam_mpi.launcher.store import Store
from balsam_mpi.tasks.writer import TaskWriter


@pytest.fixture()
def apps(conn: psycopg.Connection) -> None:
    from balsam_mpi import Client

    with Client() as c:
        c.add_app("hello", "echo hello {who}")


def _states(conn: psycopg.Connection, ids: list[int]) -> dict[int, tuple[str, int]]:
    rows = conn.execute("SELECT id, state::text, pending_parents FROM tasks "
                        "WHERE id = ANY(%s)", [ids]).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_a_writer_over_a_plain_connection_adds_a_dag(pg_project: Project, apps: None,
                                                     conn: psycopg.Connection) -> None:
    with db.connect(pg_project, autocommit=True) as own:
        writer = TaskWriter(own)
        [a] = writer.add([{"app": "hello", "workflow": "w", "params": {"who": "a"}}])
        ids = writer.add([
            {"app": "hello", "workflow": "w", "params": {"who": "c"}, "parents": ["b", a]},
            {"app": "hello", "workflow": "w", "params": {"who": "b"}, "key": "b"},
        ])
    assert _states(conn, [a, *ids]) == {a: ("READY", 0), ids[0]: ("AWAITING_PARENTS", 2),
                                        ids[1]: ("READY", 0)}
    deps = conn.execute("SELECT parent_id, child_id FROM task_deps ORDER BY 1").fetchall()
    assert sorted(deps) == sorted([(a, ids[0]), (ids[1], ids[0])])


def test_a_writer_inside_an_open_transaction_rolls_back_with_it(
        pg_project: Project, apps: None, conn: psycopg.Connection) -> None:
    # Not autocommit: the writer's transaction is a savepoint of the caller's.
    with db.connect(pg_project) as own:
        TaskWriter(own).add([{"app": "hello", "workflow": "w", "params": {"who": "x"}}])
        own.rollback()
    assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_a_refused_input_names_its_label_and_writes_nothing(
        pg_project: Project, apps: None, conn: psycopg.Connection) -> None:
    with db.connect(pg_project, autocommit=True) as own:
        with pytest.raises(InputError, match=r"^tasks.jsonl line 2: params: app 'hello' "
                                             r"needs a value for \{who\}$"):
            TaskWriter(own).add([{"app": "hello", "workflow": "w", "params": {"who": "x"}},
                                 {"app": "hello", "workflow": "w"}],
                                labels=["tasks.jsonl line 1", "tasks.jsonl line 2"])
        with pytest.raises(InputError, match=r"^task #1: parents: no task with id 999$"):
            TaskWriter(own).add([{"app": "hello", "workflow": "w", "params": {"who": "x"},
                                  "parents": [999]}])
    assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_the_leader_writes_each_request_through_its_store_connection(
        pg_project: Project, apps: None, conn: psycopg.Connection) -> None:
    store = Store.connect(pg_project)
    try:
        good: tuple[dict[str, Any], ...] = (
            {"app": "hello", "workflow": "w", "params": {"who": "1"}},
            {"app": "hello", "workflow": "w", "params": {"who": "2"}, "parents": ["k"]},
            {"app": "hello", "workflow": "w", "params": {"who": "3"}, "key": "k"})
        bad: tuple[dict[str, Any], ...] = ({"app": "nope", "workflow": "w"},)
        answers = adds.write(store, [(1, 7, good), (2, 8, bad), (0, 9, good)])
    finally:
        store.close()
    (r1, q1, ids1, e1), (r2, q2, ids2, e2), (r3, q3, ids3, e3) = answers
    assert (r1, q1, e1, len(ids1)) == (1, 7, "", 3)
    assert (r2, q2, ids2) == (2, 8, ()) and e2.startswith("task #1: app: no app named 'nope'")
    assert (r3, q3, e3, len(ids3)) == (0, 9, "", 3)  # LOCAL: rank 0
    states = _states(conn, [*ids1, *ids3])
    assert states[ids1[1]] == ("AWAITING_PARENTS", 1)
    assert states[ids3[1]] == ("AWAITING_PARENTS", 1)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (6,)
