"""The claim's runnable indexes hold only unclaimed rows (migration 0011): a claim does not
step over the rows earlier claims took that have not started yet, and a claim's write
adds no entry to them. Read from the plan the server ran (auto_explain, with counts)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from balsam_mpi.base.project import Project

from .test_claim import add_app, add_tasks


def _claim_plan(pg_project: Project, dbname: str, workflows: list[str] | None) -> str:
    """Two claims by one batch job: 300 rows (kept, not started), then 16, whose plan
    with row counts is returned."""
    from balsam_mpi.dbctl import lifecycle

    info = pg_project.read_server_info()
    notices: list[str] = []
    with lifecycle.admin_connect(pg_project, info, dbname, autocommit=False) as admin:
        admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        row = admin.execute("SELECT job_id, lease_epoch FROM launcher_open_job(NULL, 'local', "
                            "NULL, 'h', 1, 1, '{}', NULL, 60)").fetchone()
        assert row is not None
        job, epoch = row
        first = admin.execute("SELECT count(*) FROM launcher_claim(%s, %s, 300, 300.0, 1.0, "
                              "%s, NULL, NULL, NULL, 1)", (job, epoch, workflows)).fetchone()
        assert first == (300,)
        admin.execute("LOAD 'auto_explain'")
        admin.execute("SET auto_explain.log_min_duration = 0")
        admin.execute("SET auto_explain.log_nested_statements = on")
        admin.execute("SET auto_explain.log_analyze = on")
        admin.execute("SET auto_explain.log_timing = off")
        admin.execute("SET auto_explain.log_level = 'NOTICE'")
        notices.clear()
        second = admin.execute("SELECT count(*) FROM launcher_claim(%s, %s, 16, 16.0, 1.0, "
                               "%s, NULL, NULL, NULL, 1)", (job, epoch, workflows)).fetchone()
        assert second == (16,)
        admin.rollback()
    return "\n".join(notices)


@pytest.mark.parametrize("workflows", [None, ["w"]], ids=["all", "one-workflow"])
def test_a_claim_does_not_step_over_rows_already_claimed(pg_project: Project, dbname: str,
                                                         conn: Any,
                                                         workflows: list[str] | None) -> None:
    app = add_app(conn)
    add_tasks(conn, app, 1000, workflow="w")
    plans = _claim_plan(pg_project, dbname, workflows)
    locked = plans[plans.index("locked"):]
    index = "tasks_runnable_workflow" if workflows else "tasks_runnable"
    scan = re.search(rf"Index Scan using {index} on tasks[^\n]*\n((?:\s+[A-Z][^\n]*\n)*)",
                     locked.replace('"', ""))
    assert scan is not None, plans
    # The index scan returned the 16 rows it locked, and read none of the 300 before.
    assert "rows=16 loops=1" in scan.group(0), scan.group(0)
    removed = re.search(r"Rows Removed by Filter: (\d+)", scan.group(0))
    assert removed is None, scan.group(0)


def test_deleting_a_batch_job_releases_its_tasks(pg_project: Project, dbname: str,
                                                 conn: Any) -> None:
    """What the foreign key's ON DELETE SET NULL did (0011 checks the claim's job once per
    claim instead of once per row): `prune` deletes jobs whose tasks may stay."""
    from balsam_mpi.dbctl import lifecycle

    app = add_app(conn)
    ids = add_tasks(conn, app, 5)
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname) as admin:
        row = admin.execute("SELECT job_id, lease_epoch FROM launcher_open_job(NULL, 'local', "
                            "NULL, 'h', 1, 1, '{}', NULL, 60)").fetchone()
        assert row is not None
        job, epoch = row
        admin.execute("SELECT count(*) FROM launcher_claim(%s, %s, 3, 3.0, 1.0, NULL, NULL, "
                      "NULL, NULL, 1)", (job, epoch))
        held = admin.execute("SELECT count(*) FROM tasks WHERE batch_job_id = %s",
                             (job,)).fetchone()
        assert held == (3,)
        admin.execute("DELETE FROM batch_jobs WHERE id = %s", (job,))
        left = admin.execute("SELECT count(*) FROM tasks WHERE batch_job_id IS NOT NULL"
                             ).fetchone()
        assert left == (0,)
        assert admin.execute("SELECT count(*) FROM tasks WHERE id = ANY (%s)",
                             (ids,)).fetchone() == (5,)


def test_a_claims_job_cannot_be_deleted_under_it(pg_project: Project, dbname: str,
                                                 conn: Any) -> None:
    import psycopg

    from balsam_mpi.dbctl import lifecycle

    app = add_app(conn)
    add_tasks(conn, app, 5)
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname, autocommit=False) as claimer, \
            lifecycle.admin_connect(pg_project, info, dbname) as other:
        row = claimer.execute("SELECT job_id, lease_epoch FROM launcher_open_job(NULL, "
                              "'local', NULL, 'h', 1, 1, '{}', NULL, 60)").fetchone()
        assert row is not None
        job, epoch = row
        claimer.commit()
        claimer.execute("SELECT count(*) FROM launcher_claim(%s, %s, 3, 3.0, 1.0, NULL, "
                        "NULL, NULL, NULL, 1)", (job, epoch))
        other.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("DELETE FROM batch_jobs WHERE id = %s", (job,))
        claimer.commit()
        held = other.execute("SELECT count(*) FROM tasks WHERE batch_job_id = %s",
                             (job,)).fetchone()
        assert held == (3,)
