"""The launcher end to end: real `mpiexec -n N python -m balsam_mpi` processes against a
fresh database copy, real task processes, a watchdog on every run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.base.project import Project
from tests.conftest import mpirun, needs_mpiexec

pytestmark = [pytest.mark.timeout(240), needs_mpiexec]


def launcher(ranks: int, *args: str, timeout: float = 150) -> subprocess.Popen[str]:
    argv = [*mpirun(ranks), sys.executable, "-P", "-m", "balsam_mpi",
            "--idle-timeout", "0", *args]
    env = dict(os.environ, BALSAM_FLUSH_INTERVAL_S="0.05", BALSAM_HEARTBEAT_S="2")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    proc.timeout = timeout  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen[str]) -> None:
    try:
        out, _ = proc.communicate(timeout=proc.timeout)  # type: ignore[attr-defined]
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the launcher did not end in time:\n{out}") from None
    assert proc.returncode == 0, out


def run(ranks: int, *args: str) -> None:
    finish(launcher(ranks, *args))


def add(conn: Any, n: int, *, command: str = "true", workflow: str = "w", packing: int = 1,
        app: str | None = None) -> list[int]:
    name = app or f"app_{abs(hash(command)) % 10**8}"
    conn.execute("INSERT INTO apps (name, command) VALUES (%s, %s) ON CONFLICT (name) "
                 "DO NOTHING", (name, command))
    rows = conn.execute(
        "INSERT INTO tasks (workflow, name, app_id, state, node_packing_count) "
        "SELECT %s, 't', (SELECT id FROM apps WHERE name = %s), 'READY', %s "
        "FROM generate_series(1, %s) RETURNING id", (workflow, name, packing, n)).fetchall()
    return [r[0] for r in rows]


def states(conn: Any) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT state::text, count(*) FROM tasks GROUP BY 1")}


def running_events(conn: Any) -> dict[int, int]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT task_id, count(*) FROM task_events WHERE to_state = 'RUNNING' GROUP BY 1")}


def strays(dbname: str) -> list[str]:
    """Processes (launcher ranks or tasks) still carrying this test's database name."""
    marker = f"BALSAM_DB_NAME={dbname}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker in env.split(b"\0"):
            found.append(f"{entry}: {cmd.decode(errors='replace')}")
    return found


def no_strays(dbname: str) -> None:
    deadline = time.monotonic() + 10
    while strays(dbname):
        assert time.monotonic() < deadline, strays(dbname)
        time.sleep(0.1)


def test_two_thousand_no_ops_with_four_ranks(conn: Any, dbname: str) -> None:
    ids = add(conn, 2000, packing=16)
    run(4)
    assert states(conn) == {"JOB_FINISHED": 2000}
    events = running_events(conn)
    assert sorted(events) == ids and set(events.values()) == {1}  # exactly once each
    job = conn.execute("SELECT state::text, ended_at IS NOT NULL, end_reason, ranks "
                       "FROM batch_jobs").fetchall()
    assert job == [("FINISHED", True, "idle", 4)]
    where = conn.execute("SELECT count(DISTINCT batch_job_id), min(started_at) IS NOT NULL "
                         "FROM tasks").fetchone()
    assert where == (1, True)
    no_strays(dbname)


def test_two_launchers_disjoint_then_both_on_all(conn: Any, dbname: str) -> None:
    a = add(conn, 300, workflow="a", packing=8)
    b = add(conn, 300, workflow="b", packing=8)
    first = [launcher(2, "--workflow", "a"), launcher(2, "--workflow", "b")]
    for proc in first:
        finish(proc)
    jobs = {r[0]: r[1] for r in conn.execute(
        "SELECT id, filters->'workflows' FROM batch_jobs ORDER BY id")}
    ran = {r[0]: set(r[1]) for r in conn.execute(
        "SELECT batch_job_id, array_agg(DISTINCT workflow) FROM tasks GROUP BY 1")}
    for job, wfs in jobs.items():
        assert ran[job] == set(wfs)  # each stayed within its filter
    more = add(conn, 400, workflow="a", packing=8) + add(conn, 400, workflow="b", packing=8)
    second = [launcher(2), launcher(2)]
    for proc in second:
        finish(proc)
    assert states(conn) == {"JOB_FINISHED": 1400}
    events = running_events(conn)
    assert sorted(events) == sorted(a + b + more) and set(events.values()) == {1}
    per_job = conn.execute("SELECT count(DISTINCT batch_job_id) FROM tasks "
                           "WHERE id = ANY(%s)", (more,)).fetchone()
    assert per_job is not None and per_job[0] >= 1
    no_strays(dbname)


def test_dag_runs_in_order(pg_project: Project, conn: Any, dbname: str) -> None:
    from balsam_mpi.tasks.client import Client

    with Client(pg_project) as client:
        client.add_app("step", "sleep 0.2")
        ids = client.add_tasks([
            {"app": "step", "workflow": "dag", "name": "a", "key": "a"},
            {"app": "step", "workflow": "dag", "name": "b", "key": "b", "parents": ["a"]},
            {"app": "step", "workflow": "dag", "name": "c", "key": "c", "parents": ["a"]},
            {"app": "step", "workflow": "dag", "name": "d", "parents": ["b", "c"]},
        ])
    run(3)
    rows = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "SELECT name, state::text, started_at, ended_at FROM tasks")}
    assert {v[0] for v in rows.values()} == {"JOB_FINISHED"}
    assert rows["b"][1] >= rows["a"][2] and rows["c"][1] >= rows["a"][2]
    assert rows["d"][1] >= max(rows["b"][2], rows["c"][2])
    assert len(ids) == 4
    no_strays(dbname)


def test_a_whole_node_task_waits_for_a_free_node(conn: Any, dbname: str) -> None:
    small = add(conn, 6, command="sleep 0.4", packing=2, app="half")
    big = add(conn, 1, command="sleep 0.4", packing=1, app="whole")
    run(2)  # two nodes: the leader's and one worker
    assert states(conn) == {"JOB_FINISHED": 7}
    spans = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "SELECT id, started_at, ended_at, node_packing_count FROM tasks")}
    b0, b1, _ = spans[big[0]]
    # While the big task ran, the others together never used more than the other node.
    for t in (b0, b1 - (b1 - b0) / 2):
        load = sum(1 / p for i, (s, e, p) in spans.items() if i != big[0] and s <= t < e)
        assert load <= 1.0 + 1e-9, (t, load)
    assert len(small) == 6
    no_strays(dbname)


def test_idle_timeout_ends_a_launcher_that_keeps_looking(conn: Any, dbname: str) -> None:
    """Idle for --idle-timeout s while claims keep finding nothing: exit, not hang."""
    add(conn, 20, packing=4)
    t0 = time.monotonic()
    run(2, "--idle-timeout", "1.5")
    assert states(conn) == {"JOB_FINISHED": 20}
    assert time.monotonic() - t0 < 60
    job = conn.execute("SELECT end_reason FROM batch_jobs").fetchone()
    assert job == ("idle",)
    no_strays(dbname)


def test_workflow_filter_leaves_others_alone(conn: Any, dbname: str) -> None:
    mine = add(conn, 50, workflow="mine", packing=4)
    theirs = add(conn, 50, workflow="theirs", packing=4)
    run(2, "--workflow", "mine")
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, batch_job_id FROM tasks")}
    assert {rows[i][0] for i in mine} == {"JOB_FINISHED"}
    assert {rows[i] for i in theirs} == {("READY", None)}
    untouched = conn.execute("SELECT count(*) FROM task_events WHERE task_id = ANY(%s) "
                             "AND to_state <> 'READY'", (theirs,)).fetchone()
    assert untouched == (0,)
    no_strays(dbname)


def test_failures_are_recorded_with_their_output(conn: Any, dbname: str) -> None:
    [bad] = add(conn, 1, command="sh -c 'echo broken >&2; exit 7'", app="bad")
    [missing] = add(conn, 1, command="no-such-program-xyz", app="missing")
    run(1)
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, exit_code, output_tail FROM tasks")}
    assert rows[bad] == ("FAILED", 7, "broken\n")
    assert rows[missing][0] == "FAILED" and "no-such-program-xyz" in rows[missing][2]
    no_strays(dbname)


def test_a_kill_reaches_a_running_task(pg_project: Project, conn: Any, dbname: str) -> None:
    from balsam_mpi.tasks.client import Client

    [long] = add(conn, 1, command="sleep 600", app="long")
    proc = launcher(2)
    deadline = time.monotonic() + 60
    while conn.execute("SELECT state::text FROM tasks").fetchone() != ("RUNNING",):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    t0 = time.monotonic()
    with Client(pg_project) as client:
        assert client.kill([long]) == [long]
    finish(proc)  # the launcher ends once the killed task is gone (idle timeout 0)
    assert time.monotonic() - t0 < 15
    row = conn.execute("SELECT state::text, batch_job_id IS NOT NULL FROM tasks").fetchone()
    assert row == ("USER_KILLED", True)  # the task's own end did not overwrite the kill
    no_strays(dbname)


CRASHING_WORKER = """
import sys
from mpi4py import MPI
from balsam_mpi.node import node
if MPI.COMM_WORLD.Get_rank() == 1:
    started = node.Node._start
    def _start(self, spec):
        if self.started_total >= 2:
            raise RuntimeError("injected failure on rank 1")
        started(self, spec)
    node.Node._start = _start
from balsam_mpi.launcher.launch import main
main(sys.argv[1:])
"""


def test_a_crashing_worker_aborts_the_run_cleanly(conn: Any, dbname: str) -> None:
    """An unhandled error on a worker: the leader writes what it holds, closes its batch
    job as FAILED (running tasks requeued), and the whole world aborts; nothing hangs."""
    add(conn, 40, command="sleep 0.5", packing=4)
    argv = [*mpirun(2), sys.executable, "-c", CRASHING_WORKER, "--idle-timeout", "0"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr + proc.stdout
    job = conn.execute("SELECT state::text, end_reason FROM batch_jobs").fetchone()
    assert job is not None and job[0] == "FAILED" and "rank 1" in job[1]
    left = conn.execute("SELECT count(*) FROM tasks WHERE state = 'RUNNING' "
                        "OR batch_job_id IS NOT NULL AND state IN ('READY', 'RESTART_READY')"
                        ).fetchone()
    assert left == (0,)  # nothing left claimed or marked running by the dead job
    lost = conn.execute("SELECT count(*) FROM tasks WHERE state = 'RESTART_READY' "
                        "AND lost_retries = 1 AND state_message LIKE 'lost:%'").fetchone()
    assert lost is not None and lost[0] >= 1  # what ran when it failed counts as lost
    no_strays(dbname)


def test_sigterm_drains_and_requeues_for_free(conn: Any, dbname: str) -> None:
    """The scheduler's SIGTERM: running tasks are cut off and requeued without spending a
    retry, unstarted claims released, the batch job closed with the signal as reason."""
    import signal

    add(conn, 6, command="sleep 60", packing=4, app="sixty")
    proc = launcher(2)
    deadline = time.monotonic() + 60
    while conn.execute("SELECT count(*) FROM tasks WHERE state = 'RUNNING'").fetchone() < (2,):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    rows = conn.execute("SELECT state::text, batch_job_id, error_retries, timeout_retries, "
                        "lost_retries FROM tasks").fetchall()
    assert {r[0] for r in rows} <= {"READY", "RESTART_READY"}
    assert all(r[1:] == (None, 0, 0, 0) for r in rows)
    job = conn.execute("SELECT state::text, end_reason FROM batch_jobs").fetchone()
    assert job == ("FINISHED", "SIGTERM")
    no_strays(dbname)


def test_wall_time_is_respected_by_claims_and_the_drain(conn: Any, dbname: str) -> None:
    """--time-limit-min: a task that cannot fit is never claimed; near the end the
    launcher drains (drain_grace_s before it) and requeues what runs, uncounted."""
    [fits] = add(conn, 1, command="sleep 60", app="cut")
    [too_long] = add(conn, 1, command="true", app="long")
    conn.execute("SELECT * FROM tasks_modify(%s::bigint[], '{\"wall_time_min\": 5}')", ([too_long],))
    argv = [*mpirun(1), sys.executable, "-P", "-m", "balsam_mpi", "--idle-timeout", "0",
            "--time-limit-min", "0.6"]
    env = dict(os.environ, BALSAM_DRAIN_GRACE_S="33", BALSAM_KILL_GRACE_S="2")
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 30  # drained 33 s before the 36 s limit, not at its end
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, batch_job_id, timeout_retries, lost_retries FROM tasks")}
    assert rows[too_long] == ("READY", None, 0, 0)
    assert rows[fits] == ("RESTART_READY", None, 0, 0)
    job = conn.execute("SELECT state::text, end_reason, wall_time_min FROM batch_jobs"
                       ).fetchone()
    assert job is not None and job[:2] == ("FINISHED", "wall time")
    assert abs(job[2] - 0.6) < 0.05
    no_strays(dbname)


@pytest.mark.parametrize("ranks", [1, 2])
def test_an_owner_no_task_can_have_is_refused_before_anything_is_written(
        conn: Any, dbname: str, ranks: int) -> None:
    """`--owner alcie` (for alice) claimed nothing until its idle timeout, or for the
    whole allocation with --persistent. Now the leader asks the database first: one line
    naming --owner and the value, exit 2, no batch job opened."""
    add(conn, 2)
    proc = launcher(ranks, "--owner", "alcie", timeout=90)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 2, out
    assert out.count("error:") == 1, out
    assert "balsam_mpi launcher: error: --owner 'alcie': no member of this project" in out
    assert "Traceback" not in out and "CRITICAL" not in out, out
    assert conn.execute("SELECT count(*) FROM batch_jobs").fetchone()[0] == 0
    assert states(conn) == {"READY": 2}
