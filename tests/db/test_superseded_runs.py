"""A batch job the scheduler started again (Slurm's requeue, PBS's rerun) after a run of
it died without closing (migration 0021): the new run adopts the row under a new epoch,
and the dead run's tasks — running, or claimed and unstarted — were stranded for ever.
They are requeued once the dead run's lease (from its last heartbeat) has run out, as a
lost job's are, and the new run waits for them before it counts itself idle.

The dead run's heartbeat is moved back on the server (no sleeping)."""

from __future__ import annotations

from typing import Any

from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Expired, Lease
from balsam_mpi.protocol import Started
from tests.db.test_lease import T0, add_tasks, as_superuser, claim, go_silent


def open_scheduled(store: Store, lease_sec: float = 60.0) -> Lease:
    """The run of scheduler job 77 (a batch script's launcher finds its row by its
    scheduler job id)."""
    return store.open_job(job_id=None, scheduler="slurm", scheduler_job_id="77", host="h",
                          nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                          lease_sec=lease_sec)


def test_a_dead_runs_tasks_are_requeued_once_its_lease_runs_out(store: Store,
                                                                conn: Any) -> None:
    a, b, c = add_tasks(conn, 3)
    first = open_scheduled(store)
    assert claim(store, first, 3) == [a, b, c]
    store.report(first, [Started(a, first.epoch, T0), Started(b, first.epoch, T0)], [])
    # The run dies (kill -9); the scheduler starts the job again at once.
    second = open_scheduled(store)
    assert second.job_id == first.job_id and second.epoch == first.epoch + 1
    assert second.adopted
    assert claim(store, second, 3) == []  # still the dead run's: nothing to claim
    assert store.expire_leases() == []  # its lease has not run out: not yet
    [held] = store.held_elsewhere(second, ClaimFilter(), 1)
    assert held.job_id == second.job_id and not held.queued
    assert 0 < held.lease_s - held.silent_s <= 60  # left until the dead run's lease ends

    go_silent(conn, second, 120)  # its last heartbeat, before the adoption: long ago
    with as_superuser(conn) as su:  # the instant the adoption recorded, moved back too
        su.execute("UPDATE batch_jobs SET superseded_until = now() - interval '1 s'")
    me = conn.execute("SELECT session_user").fetchone()[0]
    # The job itself is alive (its heartbeat is old here only because it was forged).
    conn.execute("SELECT launcher_heartbeat(%s, %s)", (second.job_id, second.epoch))
    assert store.expire_leases() == [Expired(first.job_id, me, 2, 0, 1, True)]
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, lost_retries, batch_job_id, state_message FROM tasks")}
    assert rows[a][:3] == rows[b][:3] == ("RESTART_READY", 1, None)
    assert rows[c] == ("READY", 0, None, "")  # claimed, never started: released
    assert "epoch 1 ended without closing" in rows[a][3]
    assert sorted(claim(store, second, 3)) == [a, b, c]  # the new run takes them
    assert store.held_elsewhere(second, ClaimFilter(), 1) == []
    assert store.expire_leases() == []  # done once
    job = conn.execute("SELECT state::text, superseded_until FROM batch_jobs").fetchone()
    assert job == ("RUNNING", None)


def test_an_adoption_with_nothing_held_records_nothing(store: Store, conn: Any) -> None:
    [a] = add_tasks(conn, 1)
    first = open_scheduled(store)
    claim(store, first, 1)
    store.report(first, [Started(a, first.epoch, T0)], [])
    store.close_job(first, "FINISHED", "SIGTERM")  # a clean end requeues what ran
    second = open_scheduled(store)
    assert conn.execute("SELECT superseded_until FROM batch_jobs WHERE id = %s",
                        (second.job_id,)).fetchone() == (None,)
    assert store.held_elsewhere(second, ClaimFilter(), 1) == []
    assert claim(store, second, 1) == [a]


def test_the_new_runs_own_tasks_are_not_touched(store: Store, conn: Any) -> None:
    a, b = add_tasks(conn, 2)
    first = open_scheduled(store)
    claim(store, first, 1)
    store.report(first, [Started(a, first.epoch, T0)], [])
    second = open_scheduled(store)
    assert claim(store, second, 1) == [b]
    store.report(second, [Started(b, second.epoch, T0)], [])
    with as_superuser(conn) as su:
        su.execute("UPDATE batch_jobs SET superseded_until = now() - interval '1 s'")
    [swept] = store.expire_leases()
    assert (swept.requeued, swept.released, swept.superseded) == (1, 0, True)
    states = dict(conn.execute("SELECT id, state::text FROM tasks").fetchall())
    assert states == {a: "RESTART_READY", b: "RUNNING"}
