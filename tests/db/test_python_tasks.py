"""Python apps and results in the database (migration 0009): the app's import path and its
checks (client and database), the leader's results written with the reports and fenced
like them, the guard that keeps anyone else from writing a result, and the notification
a statement sends when tasks reach a final state."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from balsam_mpi import Client
from balsam_mpi.base import db, limits
from balsam_mpi.base.errors import PermissionDenied, UsageError
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.appinfo import AppCache
from balsam_mpi.launcher.orders import OrderBuilder
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Lease
from balsam_mpi.protocol import EndKind, Finished, Started

T0 = 1_900_000_000.0


@pytest.fixture()
def client(dbname: str) -> Any:
    with Client() as c:
        yield c


def claim(store: Store, limit: int = 100) -> tuple[Lease, list[Any]]:
    lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                           nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                           lease_sec=60)
    rows = store.claim(lease, limit=limit, capacity=100.0, max_need=1.0,
                       filters=ClaimFilter())
    return lease, rows


def finish(store: Store, lease: Lease, ids: list[int], values: list[str | None],
           kind: EndKind = EndKind.DONE) -> dict[str, int]:
    started = [Started(i, lease.epoch, T0) for i in ids]
    ended = [Finished(i, lease.epoch, int(kind), 0 if kind == EndKind.DONE else 1, T0,
                      T0 + 1, "" if kind == EndKind.DONE else "ValueError: no", v)
             for i, v in zip(ids, values, strict=True)]
    return store.report(lease, started, ended)


# -- apps ----------------------------------------------------------------------------
def test_a_python_app_is_stored_with_its_path_and_read_by_the_leader(
        client: Client, store: Store) -> None:
    client.add_app("fit", python="pkg.models:Model.fit", description="d")
    client.add_app("echo", "echo {x}")
    app = client.app("fit")
    assert (app["python"], app["command"], app["description"]) == (
        "pkg.models:Model.fit", None, "d")
    cache = AppCache()
    cache.fetch(store, ["fit", "echo"])
    assert cache.get("fit").python == "pkg.models:Model.fit"
    assert cache.get("echo").python == ""


def test_a_python_app_may_run_its_calls_without_directories_of_their_own(
        client: Client, store: Store) -> None:
    client.add_app("fast", python="pkg:f", task_dirs=False)
    client.add_app("kept", python="pkg:f")
    client.add_app("echo", "echo {x}", task_dirs=True)  # what every app has: accepted
    assert [client.app(n)["task_dirs"] for n in ("fast", "kept", "echo")] == [
        False, True, True]
    cache = AppCache()
    cache.fetch(store, ["fast", "kept", "echo"])
    assert [cache.get(n).task_dirs for n in ("fast", "kept", "echo")] == [False, True, True]


@pytest.mark.parametrize(("args", "field"), [
    ({"python": "pkg.mod"}, "python"),                 # no function
    ({"python": "pkg.mod:a:b"}, "python"),             # two colons
    ({"python": "pkg/mod:f"}, "python"),               # a path, not a module
    ({"python": "pkg..mod:f"}, "python"),
    ({"python": "1pkg:f"}, "python"),
    ({"python": "pkg:f\n"}, "python"),                 # a trailing newline
    ({"python": "päckage:f"}, "python"),               # ASCII only
    ({"python": "p:" + "f" * limits.PYTHON_PATH_MAX}, "python"),
    ({"python": "pkg:f", "command": "true"}, "command"),   # both
    ({}, "command"),                                        # neither
    ({"python": "pkg:f", "shell": True}, "shell"),
    ({"python": "pkg:f", "env_script": "/x.sh"}, "env_script"),
    ({"python": "pkg:f", "preprocess": "echo"}, "preprocess"),
    ({"python": "pkg:f", "postprocess_on_error": True}, "postprocess_on_error"),
    ({"python": "pkg:f", "task_dirs": "sometimes"}, "task_dirs"),
    ({"command": "true", "task_dirs": False}, "task_dirs"),  # a process needs its directory
])
def test_a_bad_python_app_is_one_line_naming_the_field(
        client: Client, args: dict[str, Any], field: str) -> None:
    command = args.pop("command", None)
    with pytest.raises(UsageError) as err:
        client.add_app("bad", command, **args)
    assert str(err.value).startswith(f"{field}:"), err.value
    assert "\n" not in str(err.value)
    assert client.apps() == []


def test_the_database_refuses_what_the_client_refuses(conn: Any) -> None:
    def insert(sql: str, *params: Any) -> None:
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute(sql, params)

    insert("INSERT INTO apps (name, command, python) VALUES ('a', 'true', 'pkg:f')")
    insert("INSERT INTO apps (name, command, python) VALUES ('a', NULL, NULL)")
    for bad in ("pkg.mod", "pkg:f:g", "pkg/x:f", "pkg:f\n", "p:" + "f" * limits.PYTHON_PATH_MAX):
        insert("INSERT INTO apps (name, python) VALUES ('a', %s)", bad)
    insert("INSERT INTO apps (name, python, shell) VALUES ('a', 'pkg:f', true)")
    insert("INSERT INTO apps (name, python, postprocess) VALUES ('a', 'pkg:f', 'echo')")
    insert("INSERT INTO apps (name, command, task_dirs) VALUES ('a', 'true', false)")
    longest = "p:" + "f" * (limits.PYTHON_PATH_MAX - 2)
    conn.execute("INSERT INTO apps (name, python) VALUES ('a', %s)", (longest,))


def test_python_tasks_take_any_keyword_arguments_but_no_args_and_one_node(
        client: Client) -> None:
    client.add_app("fit", python="pkg:fit")
    [tid] = client.add_tasks([{"app": "fit", "workflow": "w",
                               "params": {"alpha": 0.5, "data": [1, 2], "nested": {"a": 1}}}])
    assert client.get(tid)["params"]["nested"] == {"a": 1}
    for extra, field in (({"args": ["x"]}, "args"), ({"num_nodes": 2}, "num_nodes"),
                         ({"ranks_per_node": 4}, "ranks_per_node")):
        with pytest.raises(UsageError) as err:
            client.add_tasks([{"app": "fit", "workflow": "w", **extra}])
        assert f"{field}: app 'fit' calls a Python function" in str(err.value)


def test_the_spec_of_a_python_task_carries_the_path_and_the_json_kwargs(
        client: Client, store: Store, pg_project: Project) -> None:
    client.add_app("fit", python="pkg.mod:fit")
    [tid] = client.add_tasks([{"app": "fit", "workflow": "w", "name": "n",
                               "params": {"x": 1}, "env": {"FOO": "bar"},
                               "node_packing_count": 8, "wall_time_min": 0.5}])
    lease, rows = claim(store)
    builder = OrderBuilder(pg_project, lease.epoch)
    builder.apps.fetch(store, [r.app for r in rows])
    order = builder.build(rows[0])
    assert order.python[0] == "pkg.mod:fit" and json.loads(order.python[1]) == {"x": 1}
    assert (order.argv, order.env, order.need, order.wall_time_s) == ((), (("FOO", "bar"),),
                                                                  0.125, 30.0)
    assert order.cwd.endswith(f"/w/0/n_{tid}")


# -- results -------------------------------------------------------------------------
def test_results_are_written_with_the_reports_and_fenced_like_them(
        client: Client, store: Store, conn: Any) -> None:
    client.add_app("fit", python="pkg:fit")
    ids = client.add_tasks([{"app": "fit", "workflow": "w"} for _ in range(4)])
    lease, _ = claim(store)
    counts = finish(store, lease, ids[:2], ['{"y": 1}', None])
    assert counts["finished"] == 2 and counts["results"] == 1
    stale = Lease(lease.job_id, lease.epoch + 1, False)
    # A report of a superseded claim changes nothing, and neither does its result.
    counts = finish(store, stale, ids[2:3], ['"stale"'])
    assert (counts["started"], counts["ended"], counts["results"]) == (0, 0, 0)
    counts = finish(store, lease, ids[2:3], ['"late"'], EndKind.ERROR)  # failed: none
    assert "results" not in counts
    rows = dict(conn.execute("SELECT id, result::text FROM tasks ORDER BY id").fetchall())
    assert rows == {ids[0]: '{"y": 1}', ids[1]: None, ids[2]: None, ids[3]: None}
    assert client.get(ids[0])["result"] == {"y": 1}


def test_a_result_that_is_not_json_or_too_big_is_refused_alone(
        client: Client, store: Store, conn: Any) -> None:
    client.add_app("fit", python="pkg:fit")
    ids = client.add_tasks([{"app": "fit", "workflow": "w"} for _ in range(3)])
    lease, _ = claim(store)
    too_big = json.dumps("x" * limits.RESULT_MAX_BYTES)  # the quotes push it over
    finish(store, lease, ids, ["[1, 2", too_big, "[1, 2]"])
    rows = conn.execute("SELECT state::text, result::text, state_message FROM tasks "
                        "ORDER BY id").fetchall()
    assert rows[2] == ("JOB_FINISHED", "[1, 2]", "")
    assert rows[0] == ("JOB_FINISHED", None, "the result was not stored: not valid JSON")
    assert rows[1][1] is None and "over the cap" in rows[1][2]


def test_only_the_launcher_writes_results(client: Client, conn: Any) -> None:
    client.add_app("fit", python="pkg:fit")
    [tid] = client.add_tasks([{"app": "fit", "workflow": "w"}])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE tasks SET result = '1' WHERE id = %s", (tid,))
    app = conn.execute("SELECT id FROM apps").fetchone()[0]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO tasks (workflow, app_id, result) VALUES ('w', %s, '2')",
                     (app,))
    with pytest.raises(PermissionDenied):
        with db.translated():
            conn.execute("UPDATE tasks SET result = '1' WHERE id = %s", (tid,))


def test_not_even_the_superuser_writes_a_result(client: Client, pg_project: Project,
                                                dbname: str) -> None:
    client.add_app("fit", python="pkg:fit")
    [tid] = client.add_tasks([{"app": "fit", "workflow": "w"}])
    admin = _admin(pg_project, dbname)  # no privilege stops it: only the trigger does
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="written only by"):
            admin.execute("UPDATE tasks SET result = '1' WHERE id = %s", (tid,))
        admin.execute("UPDATE tasks SET priority = 3 WHERE id = %s", (tid,))  # the rest is
        assert client.get(tid)["priority"] == 3                             # fine
    finally:
        admin.close()


# -- notifications -------------------------------------------------------------------
def _listen(pg_project: Project, dbname: str) -> Any:
    listener = db.connect(pg_project, dbname=dbname, autocommit=True)
    listener.execute("LISTEN balsam_task_final")
    return listener


def _drain(listener: Any) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=0.5)]


def _admin(pg_project: Project, dbname: str) -> Any:
    """The superuser: members may not write tasks directly (0007); triggers fire for all."""
    from balsam_mpi.dbctl import lifecycle

    return lifecycle.admin_connect(pg_project, pg_project.read_server_info(), dbname)


def test_final_states_are_notified_in_chunks_under_the_payload_limit(
        pg_project: Project, dbname: str) -> None:
    conn = _admin(pg_project, dbname)
    app = conn.execute("INSERT INTO apps (name, command) VALUES ('a', 'true') RETURNING id"
                       ).fetchone()[0]
    ids = [r[0] for r in conn.execute(
        "INSERT INTO tasks (workflow, app_id, state) SELECT 'w', %s, 'READY' "
        "FROM generate_series(1, 1000) RETURNING id", (app,)).fetchall()]
    listener = _listen(pg_project, dbname)
    try:
        conn.execute("UPDATE tasks SET priority = 1")  # nothing ends: nothing said
        conn.execute("UPDATE tasks SET state = 'RUNNING'")
        assert _drain(listener) == []
        conn.execute("UPDATE tasks SET state = 'RUN_DONE' WHERE id <= %s", (ids[899],))
        conn.execute("UPDATE tasks SET state = 'RUN_ERROR' WHERE id = %s", (ids[900],))
        assert _drain(listener) == []  # not final yet
        conn.execute("UPDATE tasks SET state = 'JOB_FINISHED' WHERE id <= %s", (ids[899],))
        conn.execute("UPDATE tasks SET state = 'FAILED' WHERE id = %s", (ids[900],))
        conn.execute("UPDATE tasks SET state = 'USER_KILLED' WHERE id = %s", (ids[901],))
        payloads = _drain(listener)
        assert all(0 < len(p.encode()) < 8000 for p in payloads)
        assert len(payloads) == 5  # 900 ids in 350s, then one and one
        told = [int(i) for p in payloads for i in p.split(",")]
        assert sorted(told) == ids[:902]
        conn.execute("UPDATE tasks SET priority = 2 WHERE id <= %s", (ids[10],))
        conn.execute("DELETE FROM tasks WHERE id IN (%s, %s)", (ids[0], ids[950]))
        assert _drain(listener) == [str(ids[950])]  # only the one that had not ended
    finally:
        listener.close()
        conn.close()


def test_the_caps_in_the_database_are_those_of_limits(conn: Any) -> None:
    defs = dict(conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conname IN ('tasks_result_size', 'apps_python_path')").fetchall())
    assert str(limits.RESULT_MAX_BYTES) in defs["tasks_result_size"]
    assert str(limits.PYTHON_PATH_MAX) in defs["apps_python_path"]
    text = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'launcher_write_results'"
                        ).fetchone()[0]
    assert text.count(str(limits.RESULT_MAX_BYTES)) >= 3


def test_app_add_python_from_the_command_line(dbname: str) -> None:
    from click.testing import CliRunner

    from balsam_mpi.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["app", "add", "fit", "--python", "pkg.models:fit"])
    assert res.exit_code == 0 and res.output.startswith("added app fit"), res.output
    res = runner.invoke(cli, ["app", "ls"])
    assert "(python) pkg.models:fit" in res.output
    for args, field in ((["--python", "pkg/models:fit"], "python"),
                        (["--python", "pkg:f", "--command", "true"], "command"),
                        ([], "command"),
                        (["--python", "pkg:f", "--shell"], "shell"),
                        (["--command", "true", "--no-task-dirs"], "task_dirs")):
        res = runner.invoke(cli, ["app", "add", "bad", *args])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert f"error: {field}:" in lines[0], res.output
    res = runner.invoke(cli, ["app", "add", "quick", "--python", "pkg:f", "--no-task-dirs"])
    assert res.exit_code == 0, res.output
    assert "(python) pkg:f [no task dirs]" in runner.invoke(cli, ["app", "ls"]).output
    with Client() as c:
        assert [a["name"] for a in c.apps()] == ["fit", "quick"]
        assert c.app("quick")["task_dirs"] is False
