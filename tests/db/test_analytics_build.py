"""A builder for synthetic histories: batch jobs, tasks and their events at chosen times.

Events are written by hand with the event triggers switched off for the session
(``session_replication_role = replica``), so every timestamp is the one a test chooses and
the answers can be computed by hand. One test elsewhere goes through the real triggers.
The histories are written as the database superuser (fixture ``admin``) and read back
through the ordinary connection (``conn``), as a user would. This module holds no tests.

``admin`` is parametrized: every test that uses it runs twice, once with its run events
left for the reports to read one by one ("events": rolled_up false, as events written by
hand are) and once with them summed into run_steps as the event trigger would have
("run_steps": rolled_up true and weighed, that batch job's rows rebuilt after each
event), so both
paths of the reports must give the same figures (migration 0010).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import lifecycle

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# id(connection) of the admin connections whose Builder writes rolled-up run events
ROLLED_UP: set[int] = set()


@pytest.fixture(params=["events", "run_steps"])
def admin(pg_project: Project, dbname: str,
          request: pytest.FixtureRequest) -> Iterator[psycopg.Connection[Any]]:
    """The database superuser on this test's copy: only it may write task_events by hand
    (members cannot; the history is insert-only through the triggers)."""
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname) as connection:
        if request.param == "run_steps":
            ROLLED_UP.add(id(connection))
        try:
            yield connection
        finally:
            ROLLED_UP.discard(id(connection))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Builder:
    def __init__(self, conn: psycopg.Connection[Any], *, triggers: bool = False) -> None:
        self.conn = conn
        if not triggers:
            conn.execute("SET session_replication_role = replica")
        self.rolled_up = id(conn) in ROLLED_UP and not triggers
        self.apps: dict[str, int] = {}
        self.app("sim")

    def app(self, name: str) -> int:
        if name not in self.apps:
            self.apps[name] = self.conn.execute(
                "INSERT INTO apps (name, command) VALUES (%s, 'true') RETURNING id", (name,)
            ).fetchone()[0]
        return self.apps[name]

    def job(self, nodes: int, start: float | None, end: float | None = None, *,
            user: str = "alice", state: str = "FINISHED", heartbeat: float | None = None,
            submitted: float | None = None, lease: float = 60.0, host: str = "nid001",
            scheduler_job_id: str | None = None) -> int:
        if heartbeat is None and end is not None:
            heartbeat = end
        return self.conn.execute(
            'INSERT INTO batch_jobs ("user", host, nodes, ranks, state, lease_sec, '
            "submitted_at, started_at, heartbeat_at, ended_at, scheduler_job_id, "
            "wall_time_min) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 60) "
            "RETURNING id",
            (user, host, nodes, nodes, state, lease, _t(submitted), _t(start), _t(heartbeat),
             _t(end), scheduler_job_id),
        ).fetchone()[0]

    def task(self, *, state: str = "JOB_FINISHED", workflow: str = "w", owner: str = "alice",
             num_nodes: int = 1, packing: int = 1, app: str = "sim", job: int | None = None,
             exit_code: int | None = None, tail: str = "", ended: float | None = None,
             claimed: float | None = None, started: float | None = None) -> int:
        return self.conn.execute(
            "INSERT INTO tasks (workflow, app_id, state, owner, num_nodes, node_packing_count, "
            "batch_job_id, exit_code, output_tail, ended_at, claimed_at, started_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (workflow, self.app(app), state, owner, num_nodes, packing, job, exit_code, tail,
             _t(ended), _t(claimed), _t(started)),
        ).fetchone()[0]

    def event(self, task: int, src: str | None, dst: str, when: float,
              job: int | None = None) -> None:
        run_step = self.rolled_up and job is not None and "RUNNING" in (src, dst)
        self.conn.execute(
            "INSERT INTO task_events (task_id, from_state, to_state, at, batch_job_id, "
            "rolled_up, weight) SELECT %s, %s, %s, %s, %s, %s, "
            "CASE WHEN %s THEN t.num_nodes::float8 / t.node_packing_count END "
            "FROM tasks t WHERE t.id = %s",
            (task, src, dst, at(when), job, run_step, run_step, task))
        if run_step:
            self.conn.execute("SELECT run_steps_rebuild(%s)", ([job],))

    def run(self, task: int, job: int, start: float, end: float | None = None,
            end_state: str = "RUN_DONE", src: str = "READY") -> None:
        """One run: RUNNING at start, then end_state at end (no end: still running)."""
        self.event(task, src, "RUNNING", start, job)
        if end is not None:
            self.event(task, "RUNNING", end_state, end, job)
            if end_state == "RUN_DONE":
                self.event(task, "RUN_DONE", "JOB_FINISHED", end + 0.5, job)

    def finished_task(self, job: int, start: float, end: float, **kw: Any) -> int:
        tid = self.task(job=job, started=start, ended=end, exit_code=0, **kw)
        self.event(tid, None, "READY", min(start, 0.0) - 1.0)
        self.run(tid, job, start, end)
        return tid


def _t(seconds: float | None) -> datetime | None:
    return None if seconds is None else at(seconds)
