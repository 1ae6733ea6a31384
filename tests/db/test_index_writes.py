"""What a task's writes add to the indexes of `tasks` (migration 0016): a finished task is
in neither the held-rows index of its batch job nor the index by state, while every
reader that looks for what a job holds still reads that index."""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg

from balsam_mpi.base.project import Project
from balsam_mpi.launcher.store import Store
from balsam_mpi.protocol import EndKind, Finished, Started

from .test_claim import add_app, add_tasks, open_lease


def _admin(pg_project: Project, dbname: str) -> psycopg.Connection[Any]:
    from balsam_mpi.dbctl.admin import admin_connect

    return admin_connect(pg_project, pg_project.read_server_info(), dbname)


def _index_entries(admin: psycopg.Connection[Any], *names: str) -> dict[str, int]:
    """Live entries per index, as VACUUM counts them (every index scanned)."""
    admin.execute("VACUUM (INDEX_CLEANUP ON) tasks")
    rows = admin.execute("SELECT relname, reltuples::bigint FROM pg_class "
                         "WHERE relname = ANY (%s)", (list(names),)).fetchall()
    return {str(n): int(t) for n, t in rows}


def test_a_finished_task_leaves_the_held_rows_and_state_indexes(
        pg_project: Project, dbname: str, conn: Any) -> None:
    app = add_app(conn)
    add_tasks(conn, app, 300)
    with Store.connect(pg_project) as store, _admin(pg_project, dbname) as admin:
        lease = open_lease(store)
        done = store.claim(lease, limit=200, capacity=200.0, max_need=1.0,
                           filters=open_filter())
        now = time.time()
        # The short task's one write (READY → JOB_FINISHED) and the two-step path.
        store.report(lease, [Started(r.id, lease.epoch, now) for r in done[:100]],
                     [Finished(r.id, lease.epoch, int(EndKind.DONE), 0, now, now + 0.1)
                      for r in done[:100]])
        store.report(lease, [Started(r.id, lease.epoch, now) for r in done[100:]], [])
        store.report(lease, [], [Finished(r.id, lease.epoch, int(EndKind.DONE), 0, now,
                                          now + 0.1) for r in done[100:]])
        held = store.claim(lease, limit=30, capacity=30.0, max_need=1.0,
                           filters=open_filter())
        store.report(lease, [Started(r.id, lease.epoch, now) for r in held[:10]], [])
        assert conn.execute("SELECT count(*) FROM tasks WHERE state = 'JOB_FINISHED'"
                            ).fetchone() == (200,)
        entries = _index_entries(admin, "tasks_batch_job", "tasks_state_id")
    # Held: 20 claimed, 10 running. By state: 90 unclaimed or claimed READY + 10 RUNNING.
    assert entries == {"tasks_batch_job": 30, "tasks_state_id": 100}


def open_filter() -> Any:
    from balsam_mpi.launcher.storeport import ClaimFilter

    return ClaimFilter()


def _plans(admin: psycopg.Connection[Any], statement: str, params: Any) -> str:
    notices: list[str] = []
    admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    admin.execute("LOAD 'auto_explain'")
    for setting in ("auto_explain.log_min_duration = 0",
                    "auto_explain.log_nested_statements = on",
                    "auto_explain.log_level = 'NOTICE'"):
        admin.execute(f"SET {setting}")
    admin.execute(statement, params)
    return "\n".join(notices)


def test_the_readers_of_what_a_job_holds_keep_its_index(
        pg_project: Project, dbname: str, conn: Any) -> None:
    """Close, lease expiry and held_elsewhere find a job's claims and runs through
    tasks_batch_job, whose predicate their state conditions imply; a deleted job's
    finished tasks are still released (by one scan)."""
    from balsam_mpi import sql

    app = add_app(conn)
    add_tasks(conn, app, 3000)
    with _admin(pg_project, dbname) as admin:
        # Many batch jobs, each holding a few rows: the index is what the planner wants.
        jobs: list[tuple[int, int]] = []
        for _ in range(40):
            row = admin.execute("SELECT job_id, lease_epoch FROM launcher_open_job(NULL, "
                                "'local', NULL, 'h', 1, 1, '{}', NULL, 60)").fetchone()
            assert row is not None
            jobs.append((int(row[0]), int(row[1])))
        for job, epoch in jobs:
            admin.execute("SELECT count(*) FROM launcher_claim(%s, %s, 50, 50.0, 1.0, NULL, "
                          "NULL, NULL, NULL, 1)", (job, epoch))
        admin.execute("ANALYZE tasks")
        job, epoch = jobs[0]
        held = _plans(admin, sql.query("launcher_held_elsewhere"),
                      {"job": jobs[1][0], "max_nodes": 1, "workflows": None,
                       "tags": None, "owners": None})
        assert "tasks_batch_job" in held, held
        close = _plans(admin, "SELECT * FROM launcher_close_job(%s, %s, 'FINISHED', 'x')",
                       (job, epoch))
        release = close[close.index("SET batch_job_id = NULL"):]
        assert "tasks_batch_job" in release.split("Query Text", 1)[0], close
        # A job's finished tasks are not in the index; deleting the job still releases them.
        job2 = jobs[2][0]
        ids = [r[0] for r in admin.execute(
            "SELECT id FROM tasks WHERE batch_job_id = %s", (job2,)).fetchall()]
        admin.execute("UPDATE tasks SET state = 'RUNNING', started_at = now() "
                      "WHERE id = ANY (%s)", (ids,))
        admin.execute("UPDATE tasks SET state = 'RUN_DONE', ended_at = now() "
                      "WHERE id = ANY (%s)", (ids,))
        admin.execute("UPDATE tasks SET state = 'JOB_FINISHED' WHERE id = ANY (%s)", (ids,))
        admin.execute("DELETE FROM batch_jobs WHERE id = %s", (job2,))
        assert admin.execute("SELECT count(*) FROM tasks WHERE id = ANY (%s) "
                             "AND batch_job_id IS NOT NULL", (ids,)).fetchone() == (0,)
        assert len(ids) == 50


def test_the_claim_and_the_reports_use_one_plan_per_session(
        pg_project: Project, dbname: str, conn: Any) -> None:
    """Their statements run generic plans (parameters as $n), not a plan made again for
    each call's values (migration 0016)."""
    app = add_app(conn)
    add_tasks(conn, app, 100)
    with _admin(pg_project, dbname) as admin:
        row = admin.execute("SELECT job_id, lease_epoch FROM launcher_open_job(NULL, 'local', "
                            "NULL, 'h', 1, 1, '{}', NULL, 60)").fetchone()
        assert row is not None
        job, epoch = int(row[0]), int(row[1])
        claim = _plans(admin, "SELECT id FROM launcher_claim(%s, %s, 16, 16.0, 1.0, NULL, "
                              "NULL, NULL, NULL, 1)", (job, epoch))
        update = claim[claim.index("WITH locked AS"):]
        assert "Index Scan using tasks_runnable" in update, claim
        assert "num_nodes <= $" in update, claim  # p_max_nodes stays a parameter
        ids = [r[0] for r in admin.execute("SELECT id FROM tasks WHERE batch_job_id = %s",
                                           (job,)).fetchall()]
        report = _plans(admin, "SELECT * FROM launcher_apply_reports(%s, %s, %s, %s, "
                               "'{}', '{}', '{}', '{}', '{}', '{}', 0)",
                        (job, epoch, ids, [1.0e9] * len(ids)))
        start = report[report.index("SET state = 'RUNNING'"):]
        assert "lease_epoch = $" in start.split("Query Text", 1)[0], report


def test_the_queued_work_probe_does_not_walk_a_holders_running_tasks(
        pg_project: Project, dbname: str, conn: Any) -> None:
    """held_elsewhere's last column asks whether a holder has queued, unstarted work. At
    the end of a big run a holder has tens of thousands of RUNNING tasks and nothing
    queued, and an idle launcher asks every claim_idle_s: the probe must go straight to
    the holder's queued rows (tasks_batch_job by job and state), never read its runs."""
    from balsam_mpi import sql

    app = add_app(conn)
    add_tasks(conn, app, 3000)
    add_tasks(conn, app, 20_000, workflow="other")  # runnable, for other launchers
    with _admin(pg_project, dbname) as admin:
        row = admin.execute("SELECT job_id, lease_epoch FROM launcher_open_job(NULL, "
                            "'local', NULL, 'h', 1, 1, '{}', NULL, 60)").fetchone()
        assert row is not None
        holder, epoch = int(row[0]), int(row[1])
        admin.execute("SELECT count(*) FROM launcher_claim(%s, %s, 3000, 3000.0, 1.0, "
                      "ARRAY['w'], NULL, NULL, NULL, 1)", (holder, epoch))
        admin.execute("UPDATE tasks SET state = 'RUNNING', started_at = now() "
                      "WHERE batch_job_id = %s", (holder,))
        idle = admin.execute("SELECT job_id FROM launcher_open_job(NULL, 'local', NULL, 'h', "
                             "1, 1, '{}', NULL, 60)").fetchone()
        assert idle is not None
        admin.execute("ANALYZE tasks")
        admin.execute("LOAD 'auto_explain'")
        admin.execute("SET auto_explain.log_analyze = on")
        admin.execute("SET auto_explain.log_timing = off")
        plans = _plans(admin, sql.query("launcher_held_elsewhere"),
                       {"job": int(idle[0]), "max_nodes": 1, "workflows": ["w"],
                        "tags": None, "owners": None})
    assert "tasks_batch_job" in plans, plans
    walked = [int(n) for n in re.findall(r"Rows Removed by (?:Filter|Index Recheck): (\d+)",
                                         plans)]
    assert max(walked, default=0) < 10, plans
