"""Statement triggers that join their transition tables are planned for any size, and a
truncated history takes its run steps along.

A trigger's plan is made without statistics for ``old_rows``/``new_rows``; under PL/pgSQL's
plan cache the plan of a one-row statement is reused for a 10,000-row one, and a nested
loop over both transition tables costs rows² — killing the root of a 10,000-deep chain
took 6.6 s (5.5 s of server CPU) instead of 0.2 s when one such trigger (the waiters'
notification) lacked the setting. Each of them runs with ``enable_nestloop = off``, or
plans its join for the statement at hand (``EXECUTE``, as the propagation does).
"""

from __future__ import annotations

import psycopg

from balsam_mpi.base.project import Project
from balsam_mpi.tasks.client import Client

_JOINING = r"""
SELECT t.tgname, p.proname, coalesce(p.proconfig, '{}') AS config,
       p.prosrc ~ 'EXECUTE\s+\$' AS dynamic
  FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
 WHERE NOT t.tgisinternal AND t.tgoldtable IS NOT NULL AND t.tgnewtable IS NOT NULL
 ORDER BY t.tgname
"""


def test_every_trigger_joining_old_and_new_rows_plans_without_nested_loops(
        su: psycopg.Connection) -> None:
    rows = su.execute(_JOINING).fetchall()
    # One trigger after an UPDATE of tasks does the check, events, notification and DAG
    # (migration 0016); any other that joins both tables is held to the same rule.
    assert "tasks_on_update" in [name for name, *_ in rows]
    missing = [f"{name} ({fn})" for name, fn, config, dynamic in rows
               if "enable_nestloop=off" not in config and not dynamic]
    assert not missing, "without enable_nestloop=off: " + ", ".join(missing)


def test_killing_a_deep_chain_fails_every_descendant_and_notifies_once_per_chunk(
        pg_project: Project, dbname: str, conn: psycopg.Connection) -> None:
    """What the setting is for, at a size where the wrong plan would still finish."""
    with Client(pg_project) as c:
        c.add_app("hello", "echo {who}")
        chain = [{"app": "hello", "workflow": "chain", "params": {"who": "x"}, "key": "0"}]
        chain += [{"app": "hello", "workflow": "chain", "params": {"who": "x"},
                   "key": str(i), "parents": [str(i - 1)]} for i in range(1, 2000)]
        ids = c.add_tasks(chain)
        conn.execute("LISTEN balsam_task_final")
        assert c.kill(ids[0]) == [ids[0]]
        assert c.counts()["chain"] == {"USER_KILLED": 1, "FAILED": 1999}
    told = {int(i) for n in conn.notifies(timeout=2.0, stop_after=50)
            for i in n.payload.split(",")}
    assert told == set(ids)


def test_a_truncated_history_takes_its_run_steps_along(su: psycopg.Connection) -> None:
    """After TRUNCATE … RESTART IDENTITY the next batch job 1 must not inherit the old job
    1's run steps (a report said 1.4–1.9 for a run 0.86 busy)."""
    for table in ("batch_jobs", "task_events", "tasks"):
        su.execute("INSERT INTO run_steps (batch_job_id, bucket, workflow, owner, writer, "
                   "level_change) VALUES (1, 0, 'w', 'u', 1, 4.0)")
        su.execute(f"TRUNCATE {table} RESTART IDENTITY CASCADE")
        assert su.execute("SELECT count(*) FROM run_steps").fetchone() == (0,), table


def test_one_statement_trigger_runs_after_an_update_of_tasks(su: psycopg.Connection) -> None:
    """The check, the history, the waiters' notification and the DAG share one trigger
    (migration 0016): the old and new rows of a flush are joined once, not four times."""
    rows = su.execute(
        "SELECT t.tgname FROM pg_trigger t WHERE t.tgrelid = 'tasks'::regclass "
        "AND NOT t.tgisinternal AND (t.tgtype & 16) <> 0 AND (t.tgtype & 1) = 0 "
        "AND (t.tgtype & 2) = 0").fetchall()  # UPDATE, FOR EACH STATEMENT, AFTER
    assert rows == [("tasks_on_update",)]
