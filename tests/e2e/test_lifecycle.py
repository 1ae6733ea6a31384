"""A batch job's life end to end (issue 6): a launcher killed with -9 and its tasks
recovered by the next one after the lease, a kill from the CLI, a task overrunning its
own wall time, and the database going away mid-run (briefly, and for longer than half the
lease). Real `mpiexec` runs, short leases, a watchdog on every wait; nothing asserts how
long anything took.

The outage tests stop a server, so they use a project of their own (the session's project
serves every other test)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.base import db
from balsam_mpi.base.project import Project
from tests.conftest import mpirun
from tests.e2e.test_launcher import add, no_strays, running_events, states

pytestmark = pytest.mark.timeout(240)
FAST = {"BALSAM_FLUSH_INTERVAL_S": "0.05", "BALSAM_HEARTBEAT_S": "1",
        "BALSAM_EXPIRE_CHECK_S": "0.5"}


def start(ranks: int, *args: str, env: dict[str, str] | None = None,
          **settings: str) -> subprocess.Popen[str]:
    argv = [*mpirun(ranks), sys.executable, "-P", "-m", "balsam_mpi", *args]
    full = {**(env if env is not None else os.environ), **FAST, **settings}
    # Its own session: the test kills the whole launcher without touching pytest.
    return subprocess.Popen(argv, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_end(proc: subprocess.Popen[str], timeout: float = 150) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the launcher did not end in time:\n{out}") from None
    assert proc.returncode == 0, out
    return out


def wait_for(what: str, check: Any, proc: subprocess.Popen[str] | None = None,
             timeout: float = 60) -> None:
    """Poll ``check()`` until true; fail after ``timeout`` s or if the launcher ended."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the launcher ended while waiting for {what}:\n"
                                 f"{proc.communicate()[0]}")
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def count(conn: Any, query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, environment) of every process we may read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        out[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), env)
    return out


def task_pids(marker: str) -> list[int]:
    """Task processes (they carry BALSAM_TASK_ID) whose environment holds ``marker``."""
    want = marker.encode()
    return [pid for pid, (_ppid, env) in processes().items()
            if b"BALSAM_TASK_ID=" in env and want in env.split(b"\0")]


def kill_launcher_tree(root: int) -> list[int]:
    """SIGKILL mpiexec, its proxies and the ranks at once (what a scheduler does to a
    job), but not the task processes (they carry BALSAM_TASK_ID): they must die by
    themselves. hydra: mpiexec -> proxy -> ranks; Open MPI, gforker: mpiexec -> ranks."""
    procs = processes()
    level, doomed = [root], [root]
    while level:
        level = [pid for pid, (ppid, env) in procs.items()
                 if ppid in level and b"BALSAM_TASK_ID=" not in env]
        doomed += level
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return doomed


def test_kill_9_then_the_next_launcher_recovers_after_the_lease(
        pg_project: Project, conn: Any, dbname: str) -> None:
    # A first run hangs (until killed), a second one succeeds at once: no timing window.
    # One task per node, so both run at once and none waits queued. `exec`: the parent-
    # death signal reaches the task's own process, not children it forks (docs/launcher.md).
    ids = add(conn, 2, command="sh -c 'if [ -e started ]; then echo ok >> runs; "
              "else touch started; exec sleep 600; fi'", app="once")
    first = start(2, "--idle-timeout", "0", BALSAM_LEASE_S="8", BALSAM_KILL_GRACE_S="2")
    wait_for("2 running tasks", lambda: count(
        conn, "SELECT count(*) FROM tasks WHERE state = 'RUNNING'") == 2, first)
    [job1] = conn.execute("SELECT DISTINCT batch_job_id FROM tasks").fetchone()
    assert len(kill_launcher_tree(first.pid)) >= 3  # mpiexec, (hydra: a proxy,) two ranks
    first.communicate(timeout=30)
    no_strays(dbname)  # no task process survived its launcher

    second = start(2, "--persistent", "--max-tasks", "2")
    wait_end(second)

    assert states(conn) == {"JOB_FINISHED": 2}
    runs = {i: (pg_project.task_dir("w", i, "t") / "runs").read_text() for i in ids}
    assert set(runs.values()) == {"ok\n"}  # exactly one run got to the end, per task
    rows = conn.execute("SELECT id, lost_retries, batch_job_id FROM tasks ORDER BY id"
                        ).fetchall()
    [job2] = {r[2] for r in rows}
    assert job2 != job1 and [r[:2] for r in rows] == [(i, 1) for i in ids]
    assert running_events(conn) == {i: 2 for i in ids}
    done = conn.execute("SELECT task_id, batch_job_id FROM task_events "
                        "WHERE to_state = 'RUN_DONE' ORDER BY task_id").fetchall()
    assert done == [(i, job2) for i in ids]
    lost = conn.execute("SELECT task_id, from_state::text, to_state::text, batch_job_id, "
                        "message FROM task_events WHERE message LIKE 'lost:%%' "
                        "ORDER BY task_id").fetchall()
    assert [r[:4] for r in lost] == [(i, "RUNNING", "RESTART_READY", job1) for i in ids]
    assert all("lease expired" in r[4] for r in lost)
    jobs = dict(conn.execute("SELECT id, state::text FROM batch_jobs").fetchall())
    assert jobs == {job1: "LOST", job2: "FINISHED"}
    no_strays(dbname)


def test_task_kill_from_the_cli_stops_a_running_task(conn: Any, dbname: str) -> None:
    [task] = add(conn, 1, command="sleep 600", app="long")
    proc = start(1, "--idle-timeout", "0")
    wait_for("the task to run", lambda: task_pids(f"BALSAM_DB_NAME={dbname}"), proc)
    cli = Path(sys.executable).parent / "balsam-mpi"
    killed = subprocess.run([str(cli), "task", "kill", str(task)], capture_output=True,
                            text=True, timeout=60)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    # The acceptance bound (5 s) as the watchdog: the task's process is gone by then.
    wait_for("the killed task to stop", lambda: not task_pids(f"BALSAM_DB_NAME={dbname}"),
             timeout=5)
    wait_end(proc)
    row = conn.execute("SELECT state::text, batch_job_id IS NOT NULL FROM tasks").fetchone()
    assert row == ("USER_KILLED", True)  # its own end, reported later, changed nothing
    no_strays(dbname)


def test_overrunning_its_own_wall_time_is_retried_then_fails(conn: Any,
                                                             dbname: str) -> None:
    [task] = add(conn, 1, command="sleep 60", app="slow")
    conn.execute("SELECT * FROM tasks_modify(%s::bigint[], "
                 "'{\"wall_time_min\": 0.02, \"timeout_retry_limit\": 1}')",
                 ([task],))  # 1.2 s, one retry
    wait_end(start(1, "--idle-timeout", "0", BALSAM_KILL_GRACE_S="2"))
    row = conn.execute("SELECT state::text, timeout_retries, error_retries, lost_retries, "
                       "batch_job_id FROM tasks").fetchone()
    assert row == ("FAILED", 1, 0, 0, None)
    path = [r[0] for r in conn.execute(
        "SELECT to_state::text FROM task_events WHERE task_id = %s ORDER BY id", (task,))]
    assert path == ["READY", "RUNNING", "RUN_TIMEOUT", "RESTART_READY", "RUNNING",
                    "RUN_TIMEOUT", "FAILED"]
    no_strays(dbname)


def test_a_one_minute_launcher_over_two_minute_tasks(conn: Any, dbname: str) -> None:
    """`--time-limit-min 1` over `sleep 120`: a task whose wall_time_min cannot fit is
    never started; the running ones are cut off before the end (drain_grace_s before it)
    and are runnable again with no counter spent; the batch job ends within its time."""
    long_tasks = add(conn, 2, command="sleep 120", app="two_minutes")
    [too_long] = add(conn, 1, command="true", app="never")
    conn.execute("SELECT * FROM tasks_modify(%s::bigint[], '{\"wall_time_min\": 2}')", ([too_long],))
    wait_end(start(2, "--idle-timeout", "0", "--time-limit-min", "1",
                   BALSAM_DRAIN_GRACE_S="50", BALSAM_KILL_GRACE_S="2"), timeout=120)
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, batch_job_id, error_retries, timeout_retries, lost_retries "
        "FROM tasks")}
    assert rows[too_long] == ("READY", None, 0, 0, 0)
    assert [rows[i] for i in long_tasks] == [("RESTART_READY", None, 0, 0, 0)] * 2
    assert running_events(conn) == {i: 1 for i in long_tasks}  # too_long never started
    job = conn.execute("SELECT state::text, end_reason, wall_time_min, "
                       "ended_at <= started_at + make_interval(secs => 60) FROM batch_jobs"
                       ).fetchone()
    assert job is not None and job[:2] == ("FINISHED", "wall time") and job[3]
    assert abs(job[2] - 1.0) < 0.05
    no_strays(dbname)


# -- database outages (a project of their own) ------------------------------------------
@pytest.fixture(scope="module")
def own_project(session_root: Path) -> Iterator[Project]:
    from balsam_mpi.dbctl import lifecycle

    try:
        lifecycle.find_pg_bin_or_skip()
    except RuntimeError as exc:  # pragma: no cover - machines without Postgres
        pytest.skip(str(exc))
    lifecycle.init_project(session_root / "outages")
    project = Project(session_root / "outages")
    yield project
    try:
        lifecycle.stop_server(project, fast=True)
    finally:
        shutil.rmtree(project.root, ignore_errors=True)


@pytest.fixture()
def own_conn(own_project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The project's own database, emptied of the previous test's rows."""
    from balsam_mpi.dbctl import lifecycle

    monkeypatch.delenv("BALSAM_DB_NAME", raising=False)
    info = own_project.read_server_info()
    with lifecycle.admin_connect(own_project, info) as admin:  # history is not deletable
        admin.execute("DELETE FROM task_events; DELETE FROM task_deps; DELETE FROM tasks; "
                      "DELETE FROM batch_jobs")
    with db.connect(own_project, autocommit=True) as conn:
        yield conn


def own_env(project: Project) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_NAME"}
    env["BALSAM_DB_PATH"] = str(project.root)
    return env


def stop_immediately(project: Project) -> None:
    """`pg_ctl stop -m immediate` as the server account: no shutdown checkpoint, every
    connection cut, as when the server's host fails."""
    from balsam_mpi.dbctl import cluster
    from balsam_mpi.dbctl.accounts import Account

    info = project.read_server_info()
    cluster.pg_ctl_stop(project, cluster.choose_bindir(project, info),
                        Account.by_name(info.server_name), "immediate")


def restart(project: Project) -> None:
    from balsam_mpi.dbctl import lifecycle

    lifecycle.start_server(project)


def test_postgres_away_for_20_s_mid_run(own_project: Project, own_conn: Any) -> None:
    ids = add(own_conn, 6, command="sleep 5", packing=2, app="five")
    marker = f"BALSAM_DB_PATH={own_project.root}"
    # Half the lease (45 s) is well beyond the outage: the leader keeps its tasks.
    proc = start(2, "--idle-timeout", "0", env=own_env(own_project), BALSAM_LEASE_S="90",
                 BALSAM_HEARTBEAT_S="2")
    wait_for("running tasks", lambda: count(
        own_conn, "SELECT count(*) FROM tasks WHERE state = 'RUNNING'") >= 2, proc)
    own_conn.close()
    down = time.time()
    stop_immediately(own_project)
    try:
        time.sleep(20)  # the outage itself, not a poll
        assert proc.poll() is None  # the launcher rides it out
    finally:
        up = time.time()
        restart(own_project)
    out = wait_end(proc)
    assert "could not write" in out and "holding them" in out  # said so, clearly

    with db.connect(own_project, autocommit=True) as conn:
        assert states(conn) == {"JOB_FINISHED": 6}
        assert running_events(conn) == {i: 1 for i in ids}
        times = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT id, extract(epoch FROM started_at)::float8, "
            "extract(epoch FROM ended_at)::float8 FROM tasks")}
        events = conn.execute(
            "SELECT task_id, to_state::text, extract(epoch FROM at)::float8 "
            "FROM task_events WHERE to_state IN ('RUNNING', 'RUN_DONE')").fetchall()
        for task, to_state, at in events:  # the events carry the nodes' own times
            expected = times[task][0] if to_state == "RUNNING" else times[task][1]
            assert abs(at - expected) < 1e-3, (task, to_state)
        ended_while_down = [i for i, (_s, e) in times.items() if down < e < up]
        assert ended_while_down  # written after the outage, with the time they ended
        job = conn.execute("SELECT state::text, end_reason FROM batch_jobs").fetchone()
        assert job == ("FINISHED", "idle")
    wait_for("no task left", lambda: not task_pids(marker), timeout=10)


def test_a_leader_without_heartbeat_for_half_its_lease_stops_its_tasks(
        own_project: Project, own_conn: Any) -> None:
    ids = add(own_conn, 2, command="sleep 600", packing=2, app="forever")
    marker = f"BALSAM_DB_PATH={own_project.root}"
    proc = start(1, "--idle-timeout", "0", env=own_env(own_project), BALSAM_LEASE_S="6",
                 BALSAM_KILL_GRACE_S="1")
    wait_for("both tasks running", lambda: count(
        own_conn, "SELECT count(*) FROM tasks WHERE state = 'RUNNING'") == 2, proc)
    own_conn.close()
    stop_immediately(own_project)
    try:
        # With the database away nobody else can act: the leader stops them itself.
        wait_for("the leader to stop its own tasks", lambda: not task_pids(marker), proc,
                 timeout=60)
    finally:
        restart(own_project)
    out = wait_end(proc)
    assert "no heartbeat for" in out

    with db.connect(own_project, autocommit=True) as conn:
        rows = conn.execute("SELECT id, state::text, batch_job_id, lost_retries, "
                            "timeout_retries, error_retries FROM tasks ORDER BY id").fetchall()
        # Runnable again, and not running anywhere. Counted as lost only if a sweep came
        # first (none here: this was the only launcher).
        assert rows == [(i, "RESTART_READY", None, 0, 0, 0) for i in ids]
        job = conn.execute("SELECT state::text, end_reason FROM batch_jobs").fetchone()
        assert job is not None and job[1].startswith("no heartbeat for")


def test_a_launcher_started_after_a_crash_waits_for_the_dead_jobs_work(
        pg_project: Project, conn: Any, dbname: str) -> None:
    """13.6: a launcher started right after a crashed one (a short --idle-timeout, the
    crashed job's lease still running) found nothing runnable and quit, leaving the
    crashed job's tasks for whoever came next."""
    # A workflow of its own: task directories are named by id, and every test's
    # database copy numbers its tasks from 1 again.
    ids = add(conn, 2, command="sh -c 'if [ -e started ]; then echo ok >> runs; "
              "else touch started; exec sleep 600; fi'", app="once", workflow="after")
    first = start(2, "--idle-timeout", "0", BALSAM_LEASE_S="8", BALSAM_KILL_GRACE_S="2")
    wait_for("2 running tasks", lambda: count(
        conn, "SELECT count(*) FROM tasks WHERE state = 'RUNNING'") == 2, first)
    kill_launcher_tree(first.pid)
    first.communicate(timeout=30)
    second = start(1, "--idle-timeout", "1")  # not --persistent: it may end when idle
    out = wait_end(second, timeout=120)
    assert "has not heartbeated" in out  # it said why it waited
    assert states(conn) == {"JOB_FINISHED": 2}
    runs = {i: (pg_project.task_dir("after", i, "t") / "runs").read_text() for i in ids}
    assert set(runs.values()) == {"ok\n"}
    jobs = [r[0] for r in conn.execute("SELECT state::text FROM batch_jobs ORDER BY id")]
    assert jobs == ["LOST", "FINISHED"]
    no_strays(dbname)


def test_work_finished_during_a_long_outage_is_never_run_again(
        own_project: Project, own_conn: Any) -> None:
    """15.5: tasks that ended successfully while the database was down past the give-up
    point stayed RUNNING and were rerun (lost +1): the leader held their reports in
    memory only. Now they are in its journal, which the recovery writes first."""
    from balsam_mpi.dbctl import recover

    ids = add(own_conn, 4, command="sh -c 'sleep 2; echo ran >> runs'", packing=2,
              app="two", workflow="outage")
    marker = f"BALSAM_DB_PATH={own_project.root}"
    # The final write gives up after the whole lease (8 s) without a heartbeat, not the
    # default 30 s of close_patience_s.
    proc = start(2, "--idle-timeout", "0", env=own_env(own_project), BALSAM_LEASE_S="8",
                 BALSAM_KILL_GRACE_S="1", BALSAM_CLOSE_PATIENCE_S="2")
    wait_for("4 running tasks", lambda: count(
        own_conn, "SELECT count(*) FROM tasks WHERE state = 'RUNNING'") == 4, proc)
    own_conn.close()
    stop_immediately(own_project)
    try:
        # The tasks end (exit 0) while the server is down; the leader gives up after its
        # lease, with no way to write: it must end, not hang, and say where they are.
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"the launcher did not end:\n{proc.communicate()[0]}"
                                 ) from None
        assert proc.returncode != 0 and "journal" in out, out
        assert not task_pids(marker)
    finally:
        restart(own_project)
    found: list[Any] = []
    wait_for("the recovery to find the dead job",
             lambda: bool(found.extend(recover.recover(own_project)) or found), timeout=60)
    with db.connect(own_project, autocommit=True) as conn:
        assert states(conn) == {"JOB_FINISHED": 4}
        rows = conn.execute("SELECT lost_retries, exit_code FROM tasks").fetchall()
        assert rows == [(0, 0)] * 4  # nothing counted as lost
        assert running_events(conn) == {i: 1 for i in ids}
        job = conn.execute("SELECT state::text FROM batch_jobs").fetchone()
        assert job == ("LOST",)
    runs = {i: (own_project.task_dir("outage", i, "t") / "runs").read_text() for i in ids}
    assert set(runs.values()) == {"ran\n"}  # each ran once; a later launcher finds nothing
    left = [p.name for p in own_project.log_dir.glob("journal_*")]
    assert len(left) == 1  # the dead leader's journal stays (done in the database)
