"""Reports added by 0008: runs that raced their kill are kept, a dead worker's tasks are
lost (counted), a task the launcher cannot run fails with why; the claim carries the
priority order and what a node needs for input_files; and the launcher sees work held by
a job whose heartbeat is overdue."""

from __future__ import annotations

from typing import Any

import pytest

from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter
from balsam_mpi.protocol import EndKind, Finished, Started
from tests.db.test_lease import add_tasks, claim, go_silent, open_lease

pytestmark = pytest.mark.timeout(120)


T0 = 1_900_000_000.0


def history(conn: Any, task: int) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(
        "SELECT from_state::text, to_state::text, extract(epoch FROM at)::float8 "
        "FROM task_events WHERE task_id = %s ORDER BY id", (task,))]


def kill(conn: Any, task: int) -> None:
    """What `balsam-mpi task kill` writes (the claim's batch_job_id stays)."""
    conn.execute("UPDATE tasks SET state = 'USER_KILLED', state_message = 'killed' "
                 "WHERE id = %s", (task,))


def test_a_task_killed_before_its_start_was_written_keeps_its_run(
        store: Store, conn: Any, su: Any) -> None:
    """It ran to exit 0 on its node while the kill was being written: history shows the
    run (RUNNING and RUN_DONE at the node's times, exit code 0); it stays USER_KILLED."""
    a, b = add_tasks(conn, 2)
    lease = open_lease(store)
    claim(store, lease, 2)
    kill(su, a)
    kill(su, b)
    store.report(lease, [Started(a, lease.epoch, T0), Started(b, lease.epoch, T0)], [
        Finished(a, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 2),
        Finished(b, lease.epoch, int(EndKind.KILLED), -15, T0, T0 + 3, "term")])
    assert history(conn, a) == [(None, "READY", history(conn, a)[0][2]),
                                ("READY", "USER_KILLED", history(conn, a)[1][2]),
                                ("READY", "RUNNING", T0),
                                ("RUNNING", "RUN_DONE", T0 + 2)]
    assert history(conn, b)[2:] == [("READY", "RUNNING", T0),
                                    ("RUNNING", "USER_KILLED", T0 + 3)]
    got = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, exit_code, extract(epoch FROM started_at)::float8, "
        "extract(epoch FROM ended_at)::float8 FROM tasks")}
    assert got == {a: ("USER_KILLED", 0, T0, T0 + 2), b: ("USER_KILLED", -15, T0, T0 + 3)}
    # Written again (a replay): nothing more.
    store.report(lease, [Started(a, lease.epoch, T0)],
                 [Finished(a, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 2)])
    assert len(history(conn, a)) == 4


def test_a_task_killed_while_running_takes_its_end_time_and_exit_code(
        store: Store, conn: Any, su: Any) -> None:
    [a] = add_tasks(conn, 1)
    lease = open_lease(store)
    claim(store, lease, 1)
    store.report(lease, [Started(a, lease.epoch, T0)], [])
    kill(su, a)
    store.report(lease, [], [Finished(a, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 1)])
    # The kill's own event ends the run (no second end: utilization counts each run once).
    assert [h[:2] for h in history(conn, a)] == [
        (None, "READY"), ("READY", "RUNNING"), ("RUNNING", "USER_KILLED")]
    row = conn.execute("SELECT state::text, exit_code, extract(epoch FROM ended_at)::float8 "
                       "FROM tasks").fetchone()
    assert row == ("USER_KILLED", 0, T0 + 1)


def test_a_dead_workers_tasks_are_lost_and_counted(su: Any, store: Store, conn: Any) -> None:
    a, b = add_tasks(conn, 2)
    su.execute("UPDATE tasks SET lost_retries = lost_retry_limit WHERE id = %s", (b,))
    lease = open_lease(store)
    claim(store, lease, 2)
    store.report(lease, [Started(a, lease.epoch, T0), Started(b, lease.epoch, T0)], [])
    why = "worker rank 2 on h stopped answering"
    counts = store.report(lease, [], [Finished(i, lease.epoch, int(EndKind.LOST), -1, T0,
                                               T0 + 9, why) for i in (a, b)])
    assert counts["ended"] == 2
    got = {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, lost_retries, batch_job_id, state_message FROM tasks")}
    assert got[a] == ("RESTART_READY", 1, None, "lost: " + why)
    assert got[b] == ("FAILED", 3, None, "lost: " + why)


def test_a_task_the_launcher_refuses_fails_with_why(su: Any, store: Store, conn: Any) -> None:
    [a] = add_tasks(conn, 1)
    su.execute("UPDATE tasks SET error_retry_limit = 5 WHERE id = %s", (a,))
    lease = open_lease(store)
    claim(store, lease, 1)
    why = "cannot prepare the task: env: 'A=B' is not a valid environment variable name"
    store.report(lease, [Started(a, lease.epoch, T0)],
                 [Finished(a, lease.epoch, int(EndKind.REFUSED), 127, T0, T0, why)])
    row = conn.execute("SELECT state::text, state_message, error_retries FROM tasks"
                       ).fetchone()
    assert row == ("FAILED", why, 0)  # not retried: the same row fails the same way
    assert history(conn, a)[-1][:2] == ("RUN_ERROR", "FAILED")


def test_the_claim_carries_priority_order_and_input_files(su: Any, store: Store, conn: Any) -> None:
    p1, p2, child, low = add_tasks(conn, 4)
    su.execute("UPDATE tasks SET name = 'par', workflow = 'up' WHERE id IN (%s, %s)",
                 (p1, p2))
    su.execute("UPDATE tasks SET input_files = '{*.txt,x}', priority = 5 WHERE id = %s",
                 (child,))
    su.execute("INSERT INTO task_deps VALUES (%s, %s), (%s, %s)", (child, p2, child, p1))
    lease = open_lease(store)
    rows = store.claim(lease, limit=10, capacity=10.0, max_need=1.0, filters=ClaimFilter())
    assert [r.id for r in rows] == [child, p1, p2, low]  # priority, then id
    first = rows[0]
    assert first.input_files == ["*.txt", "x"]
    assert first.parents is not None
    import json

    assert json.loads(first.parents) == [["up", p1, "par"], ["up", p2, "par"]]
    assert rows[1].parents is None and rows[1].input_files == []


def test_work_other_running_jobs_hold_is_seen_with_their_heartbeat(su: Any, store: Store,
                                                                   conn: Any) -> None:
    a, b = add_tasks(conn, 2)
    su.execute("UPDATE tasks SET workflow = 'other' WHERE id = %s", (b,))
    dead = open_lease(store, lease_sec=60)
    claim(store, dead, 2)
    store.report(dead, [Started(a, dead.epoch, T0)], [])
    me = open_lease(store)
    [fresh] = store.held_elsewhere(me, ClaimFilter(), 1)
    assert (fresh.job_id, fresh.tasks, fresh.overdue) == (dead.job_id, 1, False)
    go_silent(conn, dead, 40)  # more than half its lease: overdue, not yet expired
    [held] = store.held_elsewhere(me, ClaimFilter(), 1)
    assert held.overdue and 35 < held.silent_s < 45 and held.heartbeat_at < fresh.heartbeat_at
    [held] = store.held_elsewhere(me, ClaimFilter(("other",)), 1)
    assert held.job_id == dead.job_id
    assert store.held_elsewhere(me, ClaimFilter(("nothing",)), 1) == []
    assert store.held_elsewhere(dead, ClaimFilter(), 1) == []  # never its own
