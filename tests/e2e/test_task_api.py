"""Tasks that add tasks (``balsam_mpi.task_api``) under the real launcher: a running task
adds 100 children that depend on it; all run; the database saw the launcher's one
connection and none from tasks."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_mpiexec
from tests.e2e.test_launcher import finish, no_strays, states
from tests.e2e.test_mpi_tasks import add_app, add_tasks, launcher, task_dir

pytestmark = [
    pytest.mark.timeout(240),
    needs_mpiexec,
]

SPAWNER = textwrap.dedent("""\
    import json, os
    from balsam_mpi import task_api
    me = task_api.task_id()
    wf = os.environ["BALSAM_DB_NAME"]
    kids = [{"app": "child", "workflow": wf, "name": "kid", "params": {"n": i},
             "parents": [me]} for i in range(60)]
    ids = task_api.add_tasks(kids)
    ids += task_api.add_tasks([dict(k, params={"n": 60 + i}) for i, k in enumerate(kids[:40])])
    try:
        task_api.add_tasks([{"app": "no_such_app", "workflow": wf}])
    except task_api.TaskApiError as exc:
        refused = str(exc)
    else:
        refused = ""
    with open("added.json", "w") as fh:
        json.dump({"ids": ids, "refused": refused}, fh)
""")


def sessions(conn: Any, dbname: str) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                       (dbname,)).fetchone()
    return int(row[0])


def test_a_task_adds_a_hundred_children(conn: Any, dbname: str, pg_project: Any,
                                        tmp_path: Path) -> None:
    spawner = tmp_path / "spawner.py"
    spawner.write_text(SPAWNER)
    add_app(conn, "spawner", f"{sys.executable} {spawner}")
    add_app(conn, "child", "sh -c 'echo {n} $BALSAM_TASK_ID'")
    [parent] = add_tasks(conn, "spawner")
    before = sessions(conn, dbname)
    proc = launcher(2)
    seen: dict[int, str] = {}  # every client on this database but the test itself
        # (autovacuum workers also list the database, with no application name)
    while proc.poll() is None:
        for pid, app in conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (dbname,)):
            seen[pid] = app
        conn.execute("SELECT pg_sleep(0.02)")
    finish(proc)
    added = json.loads((task_dir(pg_project, parent) / "added.json").read_text())
    ids = added["ids"]
    assert len(ids) == 100 and len(set(ids)) == 100
    assert "no_such_app" in added["refused"]  # a refused request answers with the reason
    assert states(conn) == {"JOB_FINISHED": 101}
    deps = conn.execute("SELECT count(*) FROM task_deps WHERE parent_id = %s",
                        (parent,)).fetchone()
    assert deps == (100,)
    # The children ran after their parent finished (they waited for it).
    order = conn.execute(
        "SELECT bool_and(c.started_at >= p.ended_at) FROM tasks c, tasks p "
        "WHERE p.id = %s AND c.id = ANY (%s)", (parent, ids)).fetchone()
    assert order == (True,)
    outs = {(task_dir(pg_project, i).parent / f"kid_{i}" / "task.out").read_text().split()[1]
            for i in ids}
    assert outs == {str(i) for i in ids}
    # The launcher's two connections (its leader's, its claims': claim_connection), each
    # opened once. Tasks (the spawner included) opened none.
    assert sorted(seen.values()) == ["balsam-launcher", "balsam-launcher-claims"], seen
    assert sessions(conn, dbname) - before == 2
    no_strays(dbname)


# Each spawner adds one child and says which launcher rank's node it ran on (its parent
# is the task trampoline, whose parent is the rank, whose environment still says which
# rank it is, whichever MPI started it).
ONE = textwrap.dedent("""\
    import os
    from balsam_mpi import task_api
    me = task_api.task_id()
    [kid] = task_api.add_tasks([{"app": "child", "workflow": os.environ["BALSAM_DB_NAME"],
                                 "name": "kid", "params": {"n": me}, "parents": [me]}])
    rank_pid = open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1]
    env = open(f"/proc/{rank_pid}/environ", "rb").read().split(b"\\0")
    rank = [v.split(b"=")[1] for v in env
            if v.split(b"=")[0] in (b"PMI_RANK", b"OMPI_COMM_WORLD_RANK")][0].decode()
    print(rank, kid)
""")


def test_adds_from_the_leaders_node_and_a_workers(conn: Any, dbname: str, pg_project: Any,
                                                  tmp_path: Path) -> None:
    one = tmp_path / "one.py"
    one.write_text(ONE)
    add_app(conn, "one", f"{sys.executable} {one}")
    add_app(conn, "child", "sh -c 'echo {n}'")
    parents = add_tasks(conn, "one", 4)
    finish(launcher(2))
    assert states(conn) == {"JOB_FINISHED": 8}
    lines = [(task_dir(pg_project, t) / "task.out").read_text().split() for t in parents]
    assert {rank for rank, _kid in lines} == {"0", "1"}  # both paths
    kids = conn.execute("SELECT child_id, parent_id FROM task_deps ORDER BY parent_id")
    assert [(int(kid), p) for (_r, kid), p in zip(lines, parents, strict=True)] == list(kids)
    no_strays(dbname)


def test_task_add_on_the_command_line_inside_a_task(conn: Any, dbname: str, pg_project: Any
                                                   ) -> None:
    cli = Path(sys.executable).parent / "balsam-mpi"
    add_app(conn, "cli_spawner",
            f"sh -c '{cli} task add --app child --workflow \"$BALSAM_DB_NAME\" --name kid "
            "--param n=7 --parent \"$BALSAM_TASK_ID\" --json > added.json'")
    add_app(conn, "child", "sh -c 'echo {n}'")
    [parent] = add_tasks(conn, "cli_spawner")
    before = sessions(conn, dbname)
    finish(launcher(1))
    [kid] = json.loads((task_dir(pg_project, parent) / "added.json").read_text())
    assert states(conn) == {"JOB_FINISHED": 2}
    assert conn.execute("SELECT parent_id FROM task_deps WHERE child_id = %s",
                        (kid,)).fetchall() == [(parent,)]
    assert sessions(conn, dbname) - before == 2  # the launcher's two only: the CLI used none
    no_strays(dbname)
