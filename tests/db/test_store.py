"""The launcher's other database operations: open/adopt, bulk reports (with the node's
times in the events), retries, fencing, kills never overwritten, heartbeat, close."""

from __future__ import annotations

from typing import Any

import pytest

from balsam_mpi.base.errors import BalsamError
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Lease
from balsam_mpi.protocol import EndKind, Finished, Started

T0 = 1_900_000_000.0  # a fixed node time, far from the server's clock


def as_superuser(conn: Any) -> Any:
    """The database superuser on the same test database (the socket, peer)."""
    import psycopg

    return psycopg.connect(host=conn.info.host, port=conn.info.port, dbname=conn.info.dbname,
                           user="balsam_superuser", autocommit=True)


def setup_tasks(conn: Any, n: int, **cols: Any) -> list[int]:
    app = conn.execute("INSERT INTO apps (name, command) VALUES ('a', 'true') RETURNING id"
                       ).fetchone()[0]
    retry = int(cols.get("error_retry_limit", 0))
    rows = conn.execute(
        "INSERT INTO tasks (workflow, app_id, state, error_retry_limit) "
        "SELECT 'w', %s, 'READY', %s FROM generate_series(1, %s) RETURNING id",
        (app, retry, n)).fetchall()
    return [r[0] for r in rows]


def lease_and_claim(store: Store, limit: int = 100) -> tuple[Lease, list[int]]:
    lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                           nodes=2, ranks=2, filters=ClaimFilter(), wall_time_min=None,
                           lease_sec=60)
    rows = store.claim(lease, limit=limit, capacity=100.0, max_need=1.0,
                       filters=ClaimFilter())
    return lease, [r.id for r in rows]


def states(conn: Any) -> dict[int, str]:
    return {r[0]: r[1] for r in conn.execute("SELECT id, state::text FROM tasks")}


def test_success_path_writes_node_times_into_events(store: Store, conn: Any) -> None:
    ids = setup_tasks(conn, 3)
    lease, claimed = lease_and_claim(store)
    assert claimed == ids
    started = [Started(i, lease.epoch, T0 + k) for k, i in enumerate(ids)]
    # Start and end in one flush (a task may end before its start is written).
    counts = store.report(lease, started[:2], [])
    assert counts["started"] == 2
    counts = store.report(lease, started[2:], [
        Finished(i, lease.epoch, int(EndKind.DONE), 0, T0 + k, T0 + k + 10)
        for k, i in enumerate(ids)])
    assert counts == {"started": 1, "ended": 3, "finished": 3}
    assert set(states(conn).values()) == {"JOB_FINISHED"}
    events = conn.execute(
        "SELECT task_id, to_state::text, extract(epoch FROM at)::float8, batch_job_id "
        "FROM task_events WHERE to_state IN ('RUNNING', 'RUN_DONE') ORDER BY task_id, at"
    ).fetchall()
    for k, i in enumerate(ids):
        mine = [e for e in events if e[0] == i]
        assert [(e[1], round(e[2], 3), e[3]) for e in mine] == [
            ("RUNNING", T0 + k, lease.job_id), ("RUN_DONE", T0 + k + 10, lease.job_id)]
    running = conn.execute("SELECT count(*) FROM task_events WHERE to_state = 'RUNNING'"
                           ).fetchone()
    assert running == (3,)


def test_errors_retry_then_fail_with_the_output_tail(store: Store, conn: Any) -> None:
    [task] = setup_tasks(conn, 1, error_retry_limit=1)
    for attempt in range(2):
        lease, claimed = lease_and_claim(store)
        assert claimed == [task]
        store.report(lease, [Started(task, lease.epoch, T0)],
                     [Finished(task, lease.epoch, int(EndKind.ERROR), 3, T0, T0 + 1,
                               f"boom {attempt}")])
        store.close_job(lease, "FINISHED", "test")
    row = conn.execute("SELECT state::text, error_retries, exit_code, output_tail, "
                       "batch_job_id FROM tasks").fetchone()
    assert row == ("FAILED", 1, 3, "boom 1", None)
    path = [r[0] for r in conn.execute(
        "SELECT to_state::text FROM task_events WHERE task_id = %s ORDER BY id", (task,))]
    assert path == ["READY", "RUNNING", "RUN_ERROR", "RESTART_READY", "RUNNING",
                    "RUN_ERROR", "FAILED"]


def test_timeout_and_cut_off(store: Store, conn: Any) -> None:
    a, b = setup_tasks(conn, 2)
    lease, _ = lease_and_claim(store)
    store.report(lease, [Started(a, lease.epoch, T0), Started(b, lease.epoch, T0)], [
        Finished(a, lease.epoch, int(EndKind.TIMEOUT), -15, T0, T0 + 60),
        Finished(b, lease.epoch, int(EndKind.CUT), -15, T0, T0 + 5)])
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, timeout_retries, lost_retries, error_retries, batch_job_id "
        "FROM tasks")}
    assert rows[a] == ("RESTART_READY", 1, 0, 0, None)  # a timeout spends its counter
    assert rows[b] == ("RESTART_READY", 0, 0, 0, None)  # cut off by the launcher: free


def test_superseded_epoch_and_kills_are_never_overwritten(store: Store, conn: Any) -> None:
    a, b = setup_tasks(conn, 2)
    lease, _ = lease_and_claim(store)
    store.report(lease, [Started(a, lease.epoch, T0), Started(b, lease.epoch, T0)], [])
    conn.execute("SELECT * FROM tasks_kill(%s::bigint[])", ([a],))
    stale = Lease(lease.job_id, lease.epoch + 7, False)
    counts = store.report(stale, [], [Finished(b, stale.epoch, 0, 0, T0, T0 + 1)])
    assert counts["ended"] == 0  # refused: not the claim this task runs under
    counts = store.report(lease, [], [
        Finished(a, lease.epoch, int(EndKind.ERROR), 1, T0, T0 + 1, "late"),
        Finished(b, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 1)])
    assert counts["ended"] == 1
    assert states(conn) == {a: "USER_KILLED", b: "JOB_FINISHED"}


def test_close_releases_claims_and_requeues_running(store: Store, conn: Any) -> None:
    a, b, c = setup_tasks(conn, 3)
    lease, _ = lease_and_claim(store)
    store.report(lease, [Started(a, lease.epoch, T0)], [])
    assert store.heartbeat(lease)
    released, requeued = store.close_job(lease, "FINISHED", "wall time")
    assert (released, requeued) == (2, 1)
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, batch_job_id, lost_retries FROM tasks")}
    assert rows == {a: ("RESTART_READY", None, 0), b: ("READY", None, 0),
                    c: ("READY", None, 0)}
    job = conn.execute("SELECT state::text, end_reason, ended_at IS NOT NULL FROM batch_jobs"
                       ).fetchone()
    assert job == ("FINISHED", "wall time", True)
    assert not store.heartbeat(lease)  # a closed job has no lease to renew


def test_a_failed_launcher_counts_its_running_tasks_as_lost(store: Store, conn: Any) -> None:
    a, b = setup_tasks(conn, 2)
    with as_superuser(conn) as su:  # counters are the launcher's: forged as the superuser
        su.execute("UPDATE tasks SET lost_retries = lost_retry_limit WHERE id = %s", (b,))
    lease, _ = lease_and_claim(store)
    store.report(lease, [Started(a, lease.epoch, T0), Started(b, lease.epoch, T0)], [])
    assert store.close_job(lease, "FAILED", "launcher error") == (0, 2)
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, lost_retries, state_message FROM tasks")}
    assert rows[a] == ("RESTART_READY", 1, "lost: launcher error")
    assert rows[b] == ("FAILED", 3, "lost: launcher error")


def test_adopts_a_submitted_row_by_id_or_scheduler_id(store: Store, conn: Any) -> None:
    by_id = conn.execute("SELECT batch_job_submit('pbs', 'h', 1, '{}', NULL)").fetchone()[0]
    conn.execute("SELECT batch_job_set_scheduler_id(%s, '42.host')", (by_id,))
    lease = store.open_job(job_id=by_id, scheduler="local", scheduler_job_id=None, host="h",
                           nodes=4, ranks=4, filters=ClaimFilter(("w",)), wall_time_min=30,
                           lease_sec=60)
    assert (lease.job_id, lease.adopted, lease.epoch) == (by_id, True, 1)
    again = store.open_job(job_id=None, scheduler="pbs", scheduler_job_id="42.host",
                           host="h", nodes=4, ranks=4, filters=ClaimFilter(),
                           wall_time_min=None, lease_sec=60)
    assert (again.job_id, again.adopted, again.epoch) == (by_id, True, 2)
    row = conn.execute("SELECT state::text, nodes, filters, wall_time_min FROM batch_jobs"
                       ).fetchone()
    assert row == ("RUNNING", 4, {"workflows": [], "tags": {}, "owners": []}, 30.0)
    fresh = store.open_job(job_id=None, scheduler="slurm", scheduler_job_id="7", host="h",
                           nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                           lease_sec=60)
    assert not fresh.adopted and fresh.job_id != by_id
    with pytest.raises(BalsamError, match="does not exist"):
        store.open_job(job_id=999999, scheduler="local", scheduler_job_id=None, host="h",
                       nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                       lease_sec=60)


def test_another_users_batch_job_cannot_be_used(store: Store, pg_project: Project,
                                                dbname: str) -> None:
    from balsam_mpi.dbctl import lifecycle

    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname) as admin:
        theirs = admin.execute("INSERT INTO batch_jobs (\"user\", state) VALUES "
                               "('someone_else', 'QUEUED') RETURNING id").fetchone()
    assert theirs is not None
    with pytest.raises(BalsamError, match="only its own launcher"):
        store.open_job(job_id=theirs[0], scheduler="local", scheduler_job_id=None,
                       host="h", nodes=1, ranks=1, filters=ClaimFilter(),
                       wall_time_min=None, lease_sec=60)
