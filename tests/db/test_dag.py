"""The DAG lives in the database: the launcher's plain bulk UPDATEs drive it.

Members and the owner change tasks only through the database's functions (0007), so the
launcher's own UPDATEs are played here by the superuser (``admin``), which the state
machine binds as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from balsam_mpi import Client
from balsam_mpi.base.errors import Conflict
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import lifecycle


@pytest.fixture()
def client(dbname: str) -> Any:
    with Client() as c:
        c.add_app("plain", "true")
        yield c


@pytest.fixture()
def admin(pg_project: Project, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname) as conn:
        yield conn


T = {"app": "plain", "workflow": "w"}


def _state(conn: psycopg.Connection, *ids: int) -> list[str]:
    rows = dict(conn.execute("SELECT id, state::text FROM tasks WHERE id = ANY(%s)",
                             (list(ids),)).fetchall())
    return [rows[i] for i in ids]


def _finish(conn: psycopg.Connection, *ids: int) -> None:
    # What a launcher does (as the superuser here): plain UPDATEs, no client code involved.
    conn.execute("UPDATE tasks SET state = 'RUNNING' WHERE id = ANY(%s)", (list(ids),))
    conn.execute("UPDATE tasks SET state = 'RUN_DONE' WHERE id = ANY(%s)", (list(ids),))
    conn.execute("UPDATE tasks SET state = 'JOB_FINISHED' WHERE id = ANY(%s)", (list(ids),))


def test_child_ready_when_last_parent_finishes(client: Client, conn: psycopg.Connection,
                                               admin: psycopg.Connection) -> None:
    a, b, c = client.add_tasks([{**T, "key": "a"}, {**T, "key": "b"},
                                {**T, "parents": ["a", "b"]}])
    assert _state(conn, c) == ["AWAITING_PARENTS"]
    _finish(admin, a)
    assert _state(conn, c) == ["AWAITING_PARENTS"]
    _finish(admin, b)
    assert _state(conn, c) == ["READY"]
    events = conn.execute("SELECT to_state::text FROM task_events WHERE task_id = %s "
                          "ORDER BY id", (c,)).fetchall()
    assert [e[0] for e in events] == ["AWAITING_PARENTS", "READY"]


def test_bulk_fan_in_of_thousands_in_one_statement(client: Client, conn: psycopg.Connection,
                                                   admin: psycopg.Connection) -> None:
    parents = client.add_tasks([T] * 3000)
    children = client.add_tasks([{**T, "parents": parents[i:i + 3]} for i in range(0, 3000, 3)])
    _finish(admin, *parents)
    ready = conn.execute("SELECT count(*) FROM tasks WHERE id = ANY(%s) AND state = 'READY' "
                         "AND pending_parents = 0", (children,)).fetchone()[0]
    assert ready == 1000


def test_failure_fails_descendants_unless_they_opt_out(client: Client, conn: psycopg.Connection,
                                                      admin: psycopg.Connection) -> None:
    a, b, c, d = client.add_tasks([
        {**T, "key": "a"}, {**T, "key": "b", "parents": ["a"]},
        {**T, "key": "c", "parents": ["b"]},
        {**T, "key": "d", "parents": ["a"], "fail_with_parents": False}])
    admin.execute("UPDATE tasks SET state = 'FAILED' WHERE id = %s", (a,))
    assert _state(conn, b, c, d) == ["FAILED", "FAILED", "READY"]
    msg, by = conn.execute("SELECT state_message, failed_by FROM tasks WHERE id = %s",
                           (c,)).fetchone()
    assert msg == f"upstream task {a} is FAILED" and by == a


def test_kill_and_retry_reinstate_the_subgraph(client: Client, conn: psycopg.Connection,
                                              admin: psycopg.Connection) -> None:
    a, b, c = client.add_tasks([{**T, "key": "a"}, {**T, "key": "b", "parents": ["a"]},
                                {**T, "parents": ["b"]}])
    assert client.kill(a) == [a]
    assert _state(conn, a, b, c) == ["USER_KILLED", "FAILED", "FAILED"]
    assert client.kill(a) == []  # already stopped
    assert sorted(client.retry(a)) == [a, b, c]
    assert _state(conn, a, b, c) == ["READY", "AWAITING_PARENTS", "AWAITING_PARENTS"]
    _finish(admin, a)
    _finish(admin, b)
    assert _state(conn, c) == ["READY"]


def test_retry_keeps_failed_when_another_parent_is_still_failed(
        client: Client, conn: psycopg.Connection, admin: psycopg.Connection) -> None:
    a, b, c = client.add_tasks([{**T, "key": "a"}, {**T, "key": "b"},
                                {**T, "parents": ["a", "b"]}])
    admin.execute("UPDATE tasks SET state = 'FAILED' WHERE id = ANY(%s)", ([a, b],))
    client.retry(a)
    assert _state(conn, a, c) == ["READY", "FAILED"]
    assert client.get(c)["failed_by"] == b


def test_retry_resets_counters_and_claim(client: Client, admin: psycopg.Connection) -> None:
    [a] = client.add_tasks([T])
    admin.execute("UPDATE tasks SET state = 'FAILED', timeout_retries = 3, exit_code = 1 "
                 "WHERE id = %s", (a,))
    client.retry(state="FAILED", workflow="w")
    row = client.get(a)
    assert (row["state"], row["timeout_retries"], row["exit_code"]) == ("READY", 0, None)


def test_dep_command_logic(client: Client, conn: psycopg.Connection,
                           admin: psycopg.Connection) -> None:
    a, b, c = client.add_tasks([T, T, T])
    assert client.add_dependency(a, b) is True
    assert client.add_dependency(a, b) is False
    assert _state(conn, b) == ["AWAITING_PARENTS"]
    client.add_dependency(b, c)
    with pytest.raises(Conflict, match="cycle"):
        client.add_dependency(c, a)
    with pytest.raises(Conflict, match="itself"):
        client.add_dependency(a, a)
    _finish(admin, a)
    with pytest.raises(Conflict, match="not started"):
        client.add_dependency(b, a)
    assert _state(conn, b, c) == ["READY", "AWAITING_PARENTS"]
    [d] = client.add_tasks([T])
    client.add_dependency(a, d)  # a finished parent: d stays READY
    assert _state(conn, d) == ["READY"]


def test_new_child_of_failed_parent_is_failed(client: Client, conn: psycopg.Connection,
                                             admin: psycopg.Connection) -> None:
    [a] = client.add_tasks([T])
    admin.execute("UPDATE tasks SET state = 'FAILED' WHERE id = %s", (a,))
    b, c = client.add_tasks([{**T, "key": "b", "parents": [a]}, {**T, "parents": ["b"]}])
    assert _state(conn, b, c) == ["FAILED", "FAILED"]
    assert sorted(client.retry(a)) == [a, b, c]
    assert _state(conn, b, c) == ["AWAITING_PARENTS", "AWAITING_PARENTS"]


def _has_cycle(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "WITH RECURSIVE walk (start, id) AS ("
        "  SELECT parent_id, child_id FROM task_deps"
        "  UNION SELECT w.start, d.child_id FROM walk w JOIN task_deps d ON d.parent_id = w.id)"
        " SELECT EXISTS (SELECT 1 FROM walk WHERE start = id)").fetchone()
    return bool(row and row[0])


def test_concurrent_deps_never_make_a_cycle(client: Client, conn: psycopg.Connection) -> None:
    """Two `dep` calls at once, a→b and b→a, made a cycle in 30 of 30 tries when the cycle
    check ran under READ COMMITTED with row locks only. Now exactly one wins each time."""
    import threading

    rounds = 15
    pairs = [client.add_tasks([T, T]) for _ in range(rounds)]

    def dep(c: Client, parent: int, child: int, barrier: threading.Barrier,
            got: list[str]) -> None:
        barrier.wait()
        try:
            got.append("added" if c.add_dependency(parent, child) else "existed")
        except Conflict as exc:
            got.append("cycle" if "cycle" in str(exc) else str(exc))

    with Client() as other:
        outcomes: list[list[str]] = []
        for a, b in pairs:
            barrier = threading.Barrier(2)
            got: list[str] = []
            threads = [threading.Thread(target=dep, args=(client, a, b, barrier, got)),
                       threading.Thread(target=dep, args=(other, b, a, barrier, got))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            outcomes.append(sorted(got))
    assert not _has_cycle(conn)
    assert outcomes == [["added", "cycle"]] * rounds
    assert conn.execute("SELECT count(*) FROM task_deps").fetchone() == (rounds,)


def test_killing_the_root_of_a_deep_chain_fails_it_all_and_retry_brings_it_back(
        client: Client, conn: psycopg.Connection) -> None:
    """Set-based propagation, planned for the rows it gets: the session first runs a
    one-row kill (the plan a cached trigger would keep), then the chain's root."""
    depth = 2000
    chain = [{**T, "key": "0"}] + [{**T, "key": str(i), "parents": [str(i - 1)]}
                                   for i in range(1, depth)]
    ids = client.add_tasks(chain)
    [lone] = client.add_tasks([T])
    assert client.kill(lone) == [lone]
    assert client.kill(ids[0]) == [ids[0]]
    rows = conn.execute("SELECT state::text, failed_by, count(*) FROM tasks WHERE id = ANY(%s) "
                        "GROUP BY 1, 2 ORDER BY 1", (ids,)).fetchall()
    assert rows == [("FAILED", ids[0], depth - 1), ("USER_KILLED", None, 1)]
    back = client.retry(ids[0])
    assert sorted(back) == ids
    states = dict(conn.execute("SELECT state::text, count(*) FROM tasks WHERE id = ANY(%s) "
                               "GROUP BY 1", (ids,)).fetchall())
    assert states == {"READY": 1, "AWAITING_PARENTS": depth - 1}
