"""A short task's start and end in one flush: one write of its row (READY → JOB_FINISHED),
with the same history as when the start and the end come in two flushes (migration 0011).

The two-step path (a flush of starts, a later flush of ends) and the combined path must
leave the same rows and the same events: states, node times, batch job, actor, message,
and the order of each task's events. Fencing (batch job, lease epoch, expected state)
holds for the combined write as for the others."""

from __future__ import annotations

import re
from typing import Any

from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import Lease
from balsam_mpi.protocol import EndKind, Finished, Started
from balsam_mpi.tasks.read import TaskReader
from balsam_mpi.tasks.why import explain

from .test_store import T0, as_superuser, lease_and_claim, setup_tasks, states

ROW = ("SELECT state::text, extract(epoch FROM started_at)::float8, "
       "extract(epoch FROM ended_at)::float8, exit_code, output_tail, state_message, "
       "batch_job_id, lease_epoch FROM tasks WHERE id = %s")
# The events a task's history is read from (`task why`, `report`): everything but the
# statement clock of events that carry no node time.
EVENTS = ("SELECT from_state::text, to_state::text, "
          "CASE WHEN to_state IN ('RUNNING', 'RUN_DONE') "
          "     THEN extract(epoch FROM at)::float8 END, "
          "batch_job_id, actor, message FROM task_events WHERE task_id = %s ORDER BY id")


def started(lease: Lease, ids: list[int]) -> list[Started]:
    return [Started(i, lease.epoch, T0 + k) for k, i in enumerate(ids)]


def done(lease: Lease, ids: list[int]) -> list[Finished]:
    return [Finished(i, lease.epoch, int(EndKind.DONE), 0, T0 + k, T0 + k + 10)
            for k, i in enumerate(ids)]


def history(conn: Any, task: int) -> tuple[Any, list[Any]]:
    row = conn.execute(ROW, (task,)).fetchone()
    return row, [tuple(e) for e in conn.execute(EVENTS, (task,))]


def rows_written(store: Store, lease: Lease, s: list[Started], f: list[Finished]
                 ) -> tuple[dict[str, int], int]:
    """A report, and how many task row versions its transaction wrote."""
    # The backend's counts not yet sent to the statistics include earlier statements:
    # the difference, inside one transaction, is this report's.
    query = "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'tasks'"
    with store.conn.transaction():
        before = store.conn.execute(query).fetchone()
        counts = store.report(lease, s, f)
        after = store.conn.execute(query).fetchone()
    assert after is not None
    return counts, int(after[0]) - (int(before[0]) if before else 0)


def test_start_and_end_in_one_flush_write_each_task_once(store: Store, conn: Any) -> None:
    ids = setup_tasks(conn, 5)
    lease, claimed = lease_and_claim(store)
    assert claimed == ids
    counts, updates = rows_written(store, lease, started(lease, ids), done(lease, ids))
    assert counts == {"started": 5, "ended": 5, "finished": 5}
    assert updates == 5  # not 15: start, end and finish in one write per task
    assert set(states(conn).values()) == {"JOB_FINISHED"}


def test_combined_and_two_step_histories_are_equal(store: Store, conn: Any) -> None:
    ids = setup_tasks(conn, 6)
    lease, claimed = lease_and_claim(store)
    assert claimed == ids
    a, b = ids[:3], ids[3:]
    # The same node times for a[k] and b[k]: only the way they are flushed differs.
    sa, fa = started(lease, a), done(lease, a)
    sb, fb = started(lease, b), done(lease, b)
    assert store.report(lease, sa, []) == {"started": 3}
    assert store.report(lease, [], fa) == {"ended": 3, "finished": 3}
    assert store.report(lease, sb, fb) == {"started": 3, "ended": 3, "finished": 3}
    read = TaskReader(conn)
    for x, y in zip(a, b, strict=True):
        row_x, events_x = history(conn, x)
        row_y, events_y = history(conn, y)
        assert row_x == row_y
        assert events_x == events_y
        # What `task why` says of each, but for the task's own id.
        assert [re.sub(rf"\btask {x}\b", "task #", line) for line in explain(read, x)] == [
            re.sub(rf"\btask {y}\b", "task #", line) for line in explain(read, y)]
        assert [e[1] for e in events_y] == ["READY", "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    # The run steps the reports read (run_steps, 0010): both ways counted alike.
    steps = conn.execute(
        "SELECT sum(starts), sum(ends), sum(done), sum(failed), sum(level_change) "
        "FROM run_steps WHERE batch_job_id = %s", (lease.job_id,)).fetchone()
    assert steps is not None
    assert tuple(steps[:4]) == (6, 6, 6, 0)
    assert abs(float(steps[4])) < 1e-9  # every run that started ended


def test_a_mixed_flush_combines_only_what_it_may(store: Store, conn: Any) -> None:
    """Plain successes combine; a failure, a kill that raced the run, an end whose start
    was written earlier and a stale epoch take the usual path in the same flush."""
    ok, err, killed, earlier, stale = setup_tasks(conn, 5)
    lease, _ = lease_and_claim(store)
    store.report(lease, [Started(earlier, lease.epoch, T0)], [])
    conn.execute("SELECT * FROM tasks_kill(%s::bigint[])", ([killed],))
    s = [Started(i, lease.epoch, T0) for i in (ok, err, killed)]
    s.append(Started(stale, lease.epoch + 1, T0))
    f = [Finished(ok, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 1),
         Finished(err, lease.epoch, int(EndKind.ERROR), 2, T0, T0 + 1, "bad"),
         Finished(killed, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 1),
         Finished(earlier, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 1),
         Finished(stale, lease.epoch + 1, int(EndKind.DONE), 0, T0, T0 + 1)]
    stale_lease = Lease(lease.job_id, lease.epoch + 1, False)
    counts = store.report(lease, s[:3], f[:4])
    # ok, err: started; killed: its start kept on the killed row, not counted.
    assert counts["started"] == 2
    assert counts["ended"] == 3  # ok, err, earlier (the killed run is kept, not counted)
    assert counts["finished"] == 2  # ok, earlier
    assert store.report(stale_lease, s[3:], f[4:]) == {"started": 0, "ended": 0,
                                                       "finished": 0}
    assert states(conn) == {ok: "JOB_FINISHED", err: "FAILED", killed: "USER_KILLED",
                            earlier: "JOB_FINISHED", stale: "READY"}
    path = {i: [r[0] for r in conn.execute(
        "SELECT to_state::text FROM task_events WHERE task_id = %s ORDER BY id", (i,))]
        for i in (ok, err, killed, stale)}
    assert path[ok] == ["READY", "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert path[err] == ["READY", "RUNNING", "RUN_ERROR", "FAILED"]
    assert path[killed] == ["READY", "USER_KILLED", "RUNNING", "RUN_DONE"]
    assert path[stale] == ["READY"]


def test_a_direct_ready_to_finished_write_is_still_refused(conn: Any) -> None:
    """Only the report function writes the combined step; the transition check still
    refuses READY → JOB_FINISHED from anything that did not record a run."""
    import psycopg
    import pytest

    [task] = setup_tasks(conn, 1)
    with as_superuser(conn) as su:
        su.execute("SET ROLE balsam_objects")
        with pytest.raises(psycopg.errors.CheckViolation):
            su.execute("UPDATE tasks SET state = 'JOB_FINISHED' WHERE id = %s", (task,))
