"""Client: apps, bulk add (all-or-nothing), parents, listing, update, delete."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from balsam_mpi import Client
from balsam_mpi.base.errors import Conflict, InputError, NotFound, UsageError
from balsam_mpi.tasks import writer


@pytest.fixture()
def client(dbname: str) -> Any:
    with Client() as c:
        c.add_app("hello", "echo hello {who}")
        c.add_app("plain", "true")
        yield c


def _count(conn: psycopg.Connection, table: str = "tasks") -> int:
    from psycopg import sql

    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                        ).fetchone()[0]


def test_add_app_and_duplicate(client: Client) -> None:
    assert client.app("hello")["command"] == "echo hello {who}"
    with pytest.raises(Conflict, match="exists"):
        client.add_app("hello", "x")
    with pytest.raises(InputError, match="placeholder"):
        client.add_app("bad", "echo {a.b}")
    with pytest.raises(NotFound):
        client.app("nope")


def test_add_tasks_returns_ids_in_order_with_events(client: Client,
                                                   conn: psycopg.Connection) -> None:
    ids = client.add_tasks([{"app": "hello", "workflow": "demo", "name": f"t{i}",
                             "params": {"who": str(i)}, "node_packing_count": 16,
                             "wall_time_min": 1} for i in range(50)])
    assert len(ids) == 50 and ids == sorted(ids)
    rows = conn.execute("SELECT id, name, state, node_packing_count, params FROM tasks "
                        "ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ids
    assert rows[7][1] == "t7" and str(rows[7][2]) == "READY" and rows[7][3] == 16
    assert rows[7][4] == {"who": "7"}
    assert _count(conn, "task_events") == 50


@pytest.mark.parametrize("bad, field", [
    ({"app": "nope"}, "app"),
    ({"num_nodes": 0}, "num_nodes"),
    ({"node_packing_count": 0}, "node_packing_count"),
    ({"wall_time_min": -1}, "wall_time_min"),
    ({"params": {"who": "x", "typo": 1}}, "params"),
    ({"params": {}}, "params"),
    ({"num_nodes": "two"}, "num_nodes"),
    ({"args": "not-a-list"}, "args"),
    ({"colour": "red"}, "colour"),
    ({"parents": [999999]}, "parents"),
    ({"parents": ["nokey"]}, "parents"),
])
def test_bad_task_writes_nothing(client: Client, conn: psycopg.Connection,
                                 bad: dict[str, Any], field: str) -> None:
    good = {"app": "hello", "workflow": "w", "params": {"who": "x"}}
    with pytest.raises(InputError, match=rf"task #2: {field}"):
        client.add_tasks([good, {**good, **bad}])
    assert _count(conn) == 0 and _count(conn, "task_events") == 0


def test_cycle_in_batch_refused(client: Client, conn: psycopg.Connection) -> None:
    t = {"app": "plain", "workflow": "w"}
    with pytest.raises(InputError, match="cycle"):
        client.add_tasks([{**t, "key": "a", "parents": ["b"]}, {**t, "key": "b", "parents": ["a"]}])
    assert _count(conn) == 0


def test_parents_by_key_and_id(client: Client, conn: psycopg.Connection) -> None:
    t = {"app": "plain", "workflow": "w"}
    [root] = client.add_tasks([t])
    ids = client.add_tasks([{**t, "key": "c", "parents": ["b", root]},  # child first
                            {**t, "key": "b"}])
    got = {r["id"]: r for r in client.tasks(workflow="w")}
    assert got[ids[0]]["state"] == "AWAITING_PARENTS" and got[ids[0]]["pending_parents"] == 2
    assert got[ids[1]]["state"] == "READY"
    assert client.get(ids[0])["parents"] == sorted([root, ids[1]])
    assert _count(conn, "task_deps") == 2


def test_filters_are_exact_and_lazy(client: Client) -> None:
    t = {"app": "plain"}
    client.add_tasks([{**t, "workflow": "exp1", "name": "a1", "tags": {"k": "v"}},
                      {**t, "workflow": "exp10", "name": "b1"},
                      {**t, "workflow": "exp1", "name": "a2", "priority": 5}])
    assert [r["name"] for r in client.tasks(workflow="exp1")] == ["a1", "a2"]
    assert [r["name"] for r in client.tasks(name="a*")] == ["a1", "a2"]
    assert [r["name"] for r in client.tasks(tags={"k": "v"})] == ["a1"]
    assert [r["name"] for r in client.tasks(order="-priority", limit=1)] == ["a2"]
    assert [r["workflow"] for r in client.tasks(workflow=["exp1", "exp10"], state="ready",
                                                limit=5000)] == ["exp1", "exp10", "exp1"]
    assert client.counts() == {"exp1": {"READY": 2}, "exp10": {"READY": 1}}
    with pytest.raises(ValueError, match="unknown state"):
        client.tasks(state="NOPE")  # at the call, not at the first row
    with pytest.raises(UsageError, match="colour: not a task filter"):
        client.tasks(colour="red")


def test_many_pages(client: Client) -> None:
    client.add_tasks([{"app": "plain", "workflow": "w"}] * 4500)
    assert sum(1 for _ in client.tasks(workflow="w")) == 4500
    assert sum(1 for _ in client.tasks(limit=2500)) == 2500


def test_update_and_delete(client: Client, conn: psycopg.Connection) -> None:
    t = {"app": "plain", "workflow": "w"}
    a, b = client.add_tasks([{**t, "key": "a"}, {**t, "parents": ["a"]}])
    assert client.update([a], priority=7, tags={"x": "1"}) == [a]
    assert client.get(a)["priority"] == 7 and client.get(a)["tags"] == {"x": "1"}
    with pytest.raises(InputError, match="state"):
        client.update(a, state="READY")
    with pytest.raises(InputError, match=f"task {a}: params: 'who' is not a placeholder"):
        client.update(a, params={"who": "x"})
    with pytest.raises(UsageError):
        client.delete()
    assert client.delete(a) == [a]
    child = client.get(b)
    assert child["state"] == "READY" and child["pending_parents"] == 0
    assert _count(conn, "task_deps") == 0


def test_bad_task_in_a_later_chunk_rolls_back_the_earlier_ones(
        client: Client, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(writer, "CHUNK", 10)
    tasks: list[dict[str, Any]] = [{"app": "plain", "workflow": "w", "name": f"t{i}"}
                                   for i in range(25)]
    tasks[22]["num_nodes"] = 0
    with pytest.raises(InputError, match="task #23: num_nodes"):
        client.add_tasks(tasks)
    assert _count(conn) == 0 and _count(conn, "task_events") == 0
    tasks[22]["num_nodes"] = 2
    ids = client.add_tasks(tasks)
    rows = conn.execute("SELECT id, name, num_nodes, workflow FROM tasks ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ids and rows[22][1:] == ("t22", 2, "w")


def test_an_empty_id_list_changes_nothing(client: Client, conn: psycopg.Connection) -> None:
    """`Client().kill([])` once killed every task in the project and `delete([])`
    deleted them all: an empty list of ids (or of any filter) means no task."""
    ids = client.add_tasks([{"app": "plain", "workflow": "w"}] * 5)
    before = conn.execute("SELECT id, state::text, priority FROM tasks ORDER BY id").fetchall()
    assert client.kill([]) == [] and client.kill(ids=[], workflow="w") == []
    assert client.kill(workflow=[]) == [] and client.kill(state=[], workflow="w") == []
    assert client.delete([]) == [] and client.delete(ids=()) == []
    assert client.retry([]) == [] and client.update([], priority=3) == []
    assert list(client.tasks(ids=[])) == [] and list(client.tasks(owner=[])) == []
    with pytest.raises(UsageError, match="give task ids or a filter"):
        client.kill()
    after = conn.execute("SELECT id, state::text, priority FROM tasks ORDER BY id").fetchall()
    assert after == before and len(after) == len(ids)


@pytest.mark.parametrize("bad", [0, -1, 2**63, "1", True, 1.0])
def test_ids_are_positive_int64(client: Client, bad: Any) -> None:
    with pytest.raises(UsageError, match="is not a task id"):
        client.kill([bad])


def _claim(pg_project: Any, dbname: str, *, start: int | None = None) -> Any:
    """A launcher of the owner's claims the READY tasks (and reports one started)."""
    from balsam_mpi.base import db
    from balsam_mpi.launcher.store import Store
    from balsam_mpi.launcher.storeport import ClaimFilter
    from balsam_mpi.protocol import Started

    store = Store(db.connect(pg_project, dbname=dbname, autocommit=True), pg_project)
    lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                           nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                           lease_sec=60)
    store.claim(lease, limit=100, capacity=100.0, max_need=1.0, filters=ClaimFilter())
    if start is not None:
        store.report(lease, [Started(start, lease.epoch, 1_900_000_000.0)], [])
    return store, lease


def test_a_claimed_task_is_treated_as_started(client: Client, pg_project: Any,
                                              dbname: str) -> None:
    """`modify` of a claimed task reported success but it ran with the old values; `dep`
    onto one let it run before its new parent. Both are refused now, naming the job."""
    a, b = client.add_tasks([{"app": "hello", "workflow": "w", "params": {"who": "x"}}] * 2)
    store, lease = _claim(pg_project, dbname)
    try:
        done = client.update([a], params={"who": "y"})
        assert done == [] and done.refused == {
            a: f"claimed by batch job {lease.job_id} (it may start at any moment)"}
        assert client.get(a)["params"] == {"who": "x"}
        assert client.update([a], priority=4, tags={"k": "v"}) == [a]  # plain columns
        [parent] = client.add_tasks([{"app": "plain", "workflow": "w"}])
        with pytest.raises(Conflict, match=f"claimed by batch job {lease.job_id}"):
            client.add_dependency(parent, b)
        assert client.get(b)["parents"] == [] and client.get(b)["state"] == "READY"
    finally:
        store.close()


def test_rm_of_a_running_task_has_its_launcher_stop_it(client: Client, pg_project: Any,
                                                       dbname: str) -> None:
    """`task rm` of a RUNNING task left its process running: the task is deleted and its
    launcher's kill poll reports it, so the launcher stops the process."""
    a, b, c = client.add_tasks([{"app": "plain", "workflow": "w"}] * 3)
    store, lease = _claim(pg_project, dbname, start=a)
    try:
        assert store.kills(lease, [a, b, c]) == []
        gone = client.delete([a, b])
        assert sorted(gone) == [a, b]
        assert gone.how == {a: "deleted (its launcher stops it)",
                            b: "deleted (its launcher stops it)"}
        assert sorted(store.kills(lease, [a, b, c])) == [a, b]
        assert client.delete([a]).refused == {a: "no such task"}  # what the db did: nothing
    finally:
        store.close()


def test_modify_sets_every_modifiable_field(client: Client) -> None:
    [a] = client.add_tasks([{"app": "hello", "workflow": "w", "params": {"who": "x"}}])
    changes: dict[str, Any] = {
        "workflow": "w2", "name": "n", "params": {"who": "y"}, "args": ["-v", "two words"],
        "tags": {"k": "v"}, "env": {"OMP_NUM_THREADS": "4"}, "data": {"x": [1, 2]},
        "input_files": ["*.dat"], "num_nodes": 2, "ranks_per_node": 4,
        "threads_per_rank": 2, "gpus_per_rank": 1, "node_packing_count": 1,
        "wall_time_min": 1.5, "priority": -3, "error_retry_limit": 2,
        "timeout_retry_limit": 1, "lost_retry_limit": 0, "fail_with_parents": False}
    assert client.update(a, **changes) == [a]
    row = client.get(a)
    assert {k: row[k] for k in changes} == changes
    done = client.update([a, 999_999], priority=1)
    assert done == [a] and done.refused == {999_999: "no such task"}


def test_a_task_says_where_it_runs(client: Client) -> None:
    """`task show` and Client.get name the task's working directory, where its task.out
    and task.err are: the path the launcher makes, even for names that are not path-safe;
    for a Python app without task directories, its workflow's directory."""
    from click.testing import CliRunner

    from balsam_mpi.cli import cli

    client.add_app("quick", python="tests.pyfuncs:add", task_dirs=False)
    a, b, c = client.add_tasks([
        {"app": "hello", "workflow": "w/1", "name": "../odd name", "params": {"who": "x"}},
        {"app": "hello", "workflow": "w", "params": {"who": "y"}},
        {"app": "quick", "workflow": "w", "params": {"a": 1, "b": 2}}])
    data = client.project.data_dir
    assert client.get(a)["workdir"] == str(data / "w_1" / "0" / "_odd_name_" f"{a}")
    assert client.get(b)["workdir"] == str(data / "w" / "0" / f"{b}")
    assert client.get(c)["workdir"] == str(data / "w")
    out = CliRunner().invoke(cli, ["task", "show", str(b)]).output
    assert f"             workdir: {data / 'w' / '0' / str(b)}\n" in out
