"""Lease expiry (launcher_expire_leases, `balsam-dbctl recover`): a batch job whose
heartbeat is older than its lease is marked LOST, its running tasks requeued with the lost
counter (FAILED past the limit) and an event saying why, its unstarted claims released;
live leases are never touched, and the lost leader's late reports are refused.

Expiry is made by moving the heartbeat back on the server (no sleeping)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from balsam_mpi.base.errors import BalsamError
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Expired, Lease
from balsam_mpi.protocol import EndKind, Finished, Started

T0 = 1_900_000_000.0


def add_tasks(conn: Any, n: int) -> list[int]:
    app = conn.execute("INSERT INTO apps (name, command) VALUES ('a', 'true') "
                       "ON CONFLICT (name) DO UPDATE SET command = 'true' RETURNING id"
                       ).fetchone()[0]
    rows = conn.execute("INSERT INTO tasks (workflow, app_id, state) SELECT 'w', %s, "
                        "'READY' FROM generate_series(1, %s) RETURNING id", (app, n)).fetchall()
    return [r[0] for r in rows]


def as_superuser(conn: Any) -> Any:
    """The database superuser on the same test database (the socket, peer)."""
    import psycopg

    return psycopg.connect(host=conn.info.host, port=conn.info.port, dbname=conn.info.dbname,
                           user="balsam_superuser", autocommit=True)


def open_lease(store: Store, lease_sec: float = 5.0) -> Lease:
    return store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                          nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                          lease_sec=lease_sec)


def claim(store: Store, lease: Lease, limit: int) -> list[int]:
    return [r.id for r in store.claim(lease, limit=limit, capacity=100.0, max_need=1.0,
                                      filters=ClaimFilter())]


def go_silent(conn: Any, lease: Lease, seconds: float = 3600) -> None:
    """The leader stopped heartbeating `seconds` ago (by the server's clock). Only the
    launcher's functions write batch jobs (0007): forged here as the superuser."""
    with as_superuser(conn) as su:
        su.execute("UPDATE batch_jobs SET heartbeat_at = now() - make_interval(secs => %s) "
                   "WHERE id = %s", (seconds, lease.job_id))


def test_an_expired_lease_requeues_counts_and_marks_the_job_lost(store: Store,
                                                                conn: Any) -> None:
    a, b, c = add_tasks(conn, 3)
    with as_superuser(conn) as su:
        su.execute("UPDATE tasks SET lost_retries = lost_retry_limit WHERE id = %s", (b,))
    dead = open_lease(store)
    assert claim(store, dead, 3) == [a, b, c]
    store.report(dead, [Started(a, dead.epoch, T0), Started(b, dead.epoch, T0)], [])
    [d] = add_tasks(conn, 1)
    alive = open_lease(store)
    assert claim(store, alive, 1) == [d]
    store.report(alive, [Started(d, alive.epoch, T0)], [])
    go_silent(conn, dead)
    me = conn.execute("SELECT session_user").fetchone()[0]

    assert store.expire_leases() == [Expired(dead.job_id, me, 1, 1, 1)]
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, lost_retries, batch_job_id, state_message FROM tasks")}
    assert rows[a][:3] == ("RESTART_READY", 1, None)
    assert rows[b][:3] == ("FAILED", 3, None)
    assert rows[c] == ("READY", 0, None, "")  # never started: released, nothing counted
    assert rows[d][:3] == ("RUNNING", 0, alive.job_id)  # a live lease is untouched
    assert rows[a][3].startswith("lost: lease expired: no heartbeat since")
    events = conn.execute(
        "SELECT task_id, from_state::text, to_state::text, batch_job_id, message "
        "FROM task_events WHERE message LIKE 'lost:%%' ORDER BY task_id").fetchall()
    assert [e[:4] for e in events] == [(a, "RUNNING", "RESTART_READY", dead.job_id),
                                       (b, "RUNNING", "FAILED", dead.job_id)]
    jobs = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, end_reason, ended_at IS NOT NULL FROM batch_jobs")}
    assert jobs[dead.job_id][0] == "LOST" and jobs[dead.job_id][2]
    assert jobs[dead.job_id][1].startswith("lease expired")
    assert jobs[alive.job_id] == ("RUNNING", None, False)

    assert store.expire_leases() == []  # done once
    assert not store.heartbeat(dead)  # a lost lease is not renewed
    with pytest.raises(BalsamError, match="no longer holds its lease"):
        claim(store, dead, 1)


def test_the_lost_leaders_late_reports_are_refused(store: Store, conn: Any) -> None:
    [task] = add_tasks(conn, 1)
    old = open_lease(store)
    claim(store, old, 1)
    store.report(old, [Started(task, old.epoch, T0)], [])
    go_silent(conn, old)
    assert [e.job_id for e in store.expire_leases()] == [old.job_id]
    new = open_lease(store)
    assert claim(store, new, 1) == [task]
    # The lost leader comes back and reports its run, then a start: both refused.
    late = store.report(old, [Started(task, old.epoch, T0 + 1)], [
        Finished(task, old.epoch, int(EndKind.DONE), 0, T0, T0 + 5)])
    assert late == {"started": 0, "ended": 0, "finished": 0}
    done = store.report(new, [Started(task, new.epoch, T0 + 10)], [
        Finished(task, new.epoch, int(EndKind.DONE), 0, T0 + 10, T0 + 12)])
    assert done == {"started": 1, "ended": 1, "finished": 1}
    row = conn.execute("SELECT state::text, batch_job_id, lost_retries FROM tasks").fetchone()
    assert row == ("JOB_FINISHED", new.job_id, 1)
    runs = conn.execute("SELECT batch_job_id FROM task_events WHERE to_state = 'RUN_DONE'"
                        ).fetchall()
    assert runs == [(new.job_id,)]  # exactly one successful run, the new leader's


def test_only_leases_older_than_their_own_length_expire(store: Store, conn: Any) -> None:
    short, long_ = open_lease(store, lease_sec=10), open_lease(store, lease_sec=600)
    go_silent(conn, short, 30)
    go_silent(conn, long_, 30)
    other = open_lease(store, lease_sec=10)
    go_silent(conn, other, 30)
    assert [e.job_id for e in store.expire_leases(short.job_id)] == [short.job_id]
    assert [e.job_id for e in store.expire_leases()] == [other.job_id]
    assert store.heartbeat(long_)  # 30 s silent on a 600 s lease: still its own
    states = dict(conn.execute("SELECT id, state::text FROM batch_jobs").fetchall())
    assert states == {short.job_id: "LOST", long_.job_id: "RUNNING", other.job_id: "LOST"}


def test_recover_command(store: Store, conn: Any, pg_project: Project) -> None:
    from click.testing import CliRunner

    from balsam_mpi.dbctl.cli import cli

    [task] = add_tasks(conn, 1)
    lease = open_lease(store)
    claim(store, lease, 1)
    store.report(lease, [Started(task, lease.epoch, T0)], [])
    runner = CliRunner()
    args = ["--project", str(pg_project.root), "recover"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "no batch job has an expired lease" in first.output
    go_silent(conn, lease)
    second = runner.invoke(cli, [*args, "--json"])
    assert second.exit_code == 0, second.output
    me = conn.execute("SELECT session_user").fetchone()[0]
    assert json.loads(second.output) == [{"job_id": lease.job_id, "user": me,
                                          "requeued": 1, "failed": 0, "released": 0,
                                          "superseded": False}]
    row = conn.execute("SELECT state::text, lost_retries FROM tasks").fetchone()
    assert row == ("RESTART_READY", 1)


def test_settings_keep_the_heartbeat_under_half_the_lease() -> None:
    from balsam_mpi.base.errors import UsageError
    from balsam_mpi.launcher.config import resolve

    ok = resolve({}, {"BALSAM_HEARTBEAT_S": "1", "BALSAM_LEASE_S": "3",
                      "BALSAM_EXPIRE_CHECK_S": "0.5", "BALSAM_KILL_GRACE_S": "1"})
    assert (ok.heartbeat_s, ok.lease_s, ok.expire_check_s) == (1.0, 3.0, 0.5)
    with pytest.raises(UsageError, match="less than half"):
        resolve({}, {"BALSAM_HEARTBEAT_S": "30", "BALSAM_LEASE_S": "60"})


def test_a_job_row_held_by_another_transaction_is_skipped(store: Store, conn: Any,
                                                          pg_project: Project,
                                                          dbname: str) -> None:
    """Two sweeps at once never requeue a job twice, and a sweep never waits: a row
    locked elsewhere (another sweep, the job's own heartbeat) is left for the next one."""
    [task] = add_tasks(conn, 1)
    lease = open_lease(store)
    claim(store, lease, 1)
    store.report(lease, [Started(task, lease.epoch, T0)], [])
    go_silent(conn, lease)
    from balsam_mpi.dbctl import lifecycle

    info = pg_project.read_server_info()  # only the superuser may lock a batch job's row
    with lifecycle.admin_connect(pg_project, info, dbname, autocommit=False) as other:
        other.execute("SELECT 1 FROM batch_jobs WHERE id = %s FOR UPDATE", (lease.job_id,))
        assert store.expire_leases() == []
        other.rollback()
    assert [e.requeued for e in store.expire_leases()] == [1]
    assert store.expire_leases() == []
