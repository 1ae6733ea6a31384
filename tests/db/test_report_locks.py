"""A member's bulk kill or retry is one statement that holds the row lock of every task it
changes until it ends (37-55 s over 1M tasks). A launcher running some of those tasks must
not wait on those locks: its flush writes what it can lock at once and keeps the rest, in
order, for a later flush, with the journal's mark before the first report it kept; its
heartbeat runs on a connection where nothing waits on a task row (migration 0033)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from balsam_mpi.base import db
from balsam_mpi.base.pacing import Backoff
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.calls import Calls, leader_calls
from balsam_mpi.launcher.dbthread import DbThread, Inline
from balsam_mpi.launcher.lease import LeaseWatch
from balsam_mpi.launcher.reports import ReportBuffer
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import ClaimFilter, Lease
from balsam_mpi.protocol import EndKind, Finished, Started
from tests.db.test_store import T0, setup_tasks
from tests.unit.fakeclock import Clock

pytestmark = pytest.mark.timeout(300)
N = 2000  # tasks the launcher runs; the member's statement holds the first half
PATIENCE_S = 120.0  # a bound for a hung test, never a measure of speed


@pytest.fixture()
def member(pg_project: Project, dbname: str) -> Iterator[Any]:
    """A member's session with a transaction of its own (its statement "held open")."""
    connection = db.connect(pg_project, dbname=dbname, autocommit=False)
    yield connection
    connection.rollback()
    connection.close()


def lease_and_claim(store: Store, limit: int = 100) -> tuple[Lease, list[int]]:
    lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                           nodes=2, ranks=2, filters=ClaimFilter(), wall_time_min=None,
                           lease_sec=60)
    rows = store.claim(lease, limit=limit, capacity=float(limit), max_need=1.0,
                       filters=ClaimFilter())
    return lease, [r.id for r in rows]


def waits_on_a_lock(watcher: Any, pid: int) -> bool:
    row = watcher.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s "
                          "AND NOT granted)", (pid,)).fetchone()
    return bool(row and row[0])


def run_while_held(fn: Callable[[], object]) -> bool:
    """Run ``fn`` on a thread while the member's statement still holds its locks (the
    caller ends it only afterwards); True if it finished (PATIENCE_S at most). A flush may
    wait out its own short lock_timeout (launcher_report_lock_timeout) once, never for
    the member's statement to end."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(PATIENCE_S)
    if errors:
        raise errors[0]
    return not thread.is_alive()


def test_a_flush_never_waits_on_a_members_bulk_kill(store: Store, conn: Any,
                                                    member: Any) -> None:
    ids = setup_tasks(conn, N)
    lease, claimed = lease_and_claim(store, limit=N)
    assert claimed == ids
    killed, others = ids[: N // 2], ids[N // 2:]
    # The member's `task kill` of half of them, its statement not yet ended.
    member.execute("SELECT count(*) FROM tasks_kill(%s::bigint[], 'bulk')", (killed,))

    clock = Clock(0.0)
    calls = Calls(Inline(store))
    buf = ReportBuffer(lease, store, calls, size=10 * N, interval_s=0.0,
                       held_back=Backoff(0.2, 2.0, clock=clock))
    buf.add([Started(i, lease.epoch, T0 + k) for k, i in enumerate(ids)], [])
    buf.add([], [Finished(i, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 1)
                 for i in others[:10]])

    def flush() -> None:
        assert buf.flush(idle=True)
        calls.collect()

    finished = run_while_held(flush)
    if not finished:
        member.rollback()  # lets the flush through, so the test can end
    assert finished, "the launcher's flush waited for the member's statement to end"

    rows = dict(conn.execute("SELECT id, state::text FROM tasks").fetchall())
    assert {rows[i] for i in others[10:]} == {"RUNNING"}
    assert {rows[i] for i in others[:10]} == {"JOB_FINISHED"}
    # The killed half's reports wait in the buffer, and go with a later flush.
    assert (len(buf), buf.deferred) == (N // 2, N // 2)
    assert not buf.flush(idle=True)  # not at once again: a pause first
    member.commit()
    clock.now += 10.0
    flush()
    assert not buf.pending
    states = conn.execute(
        "SELECT t.state::text, count(*), count(t.started_at), "
        "       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM task_events e "
        "                                      WHERE e.task_id = t.id "
        "                                        AND e.to_state = 'RUNNING')) "
        "  FROM tasks t GROUP BY 1 ORDER BY 1").fetchall()
    # Each start written once: the killed ones keep the run the node had begun.
    assert states == [("JOB_FINISHED", 10, 10, 10), ("RUNNING", N // 2 - 10, N // 2 - 10,
                                                     N // 2 - 10),
                      ("USER_KILLED", N // 2, N // 2, N // 2)]


def test_reports_held_back_stay_in_the_journals_reach(store: Store, conn: Any,
                                                      member: Any, su: Any) -> None:
    ids = setup_tasks(conn, 3)
    lease, claimed = lease_and_claim(store)
    assert claimed == ids
    store.journal_key(lease)  # the journal's row
    a, b, c = ids
    member.execute("SELECT count(*) FROM tasks_kill(%s::bigint[])", ([b],))
    started = [Started(i, lease.epoch, T0) for i in ids]
    answer = store.report_unlocked(lease, started, [], through=3, groups=[1, 2, 3])
    assert answer.deferred == {b}
    assert answer.counts == {"started": 2}

    def mark() -> int:
        row = su.execute("SELECT applied_through FROM launcher_journals "
                           "WHERE job_id = %s AND lease_epoch = %s",
                           (lease.job_id, lease.epoch)).fetchone()
        return int(row[0])

    assert mark() == 1  # a replay still writes b's start (group 2), and skips a's
    member.rollback()
    answer = store.report_unlocked(lease, started[1:2], [], through=3, groups=[2])
    assert (answer.counts, answer.deferred, mark()) == ({"started": 1}, frozenset(), 3)


def test_an_end_waits_while_a_child_it_would_move_is_held(store: Store, conn: Any,
                                                          member: Any, su: Any) -> None:
    [parent] = setup_tasks(conn, 1)
    child = su.execute("INSERT INTO tasks (workflow, app_id, state, pending_parents) "
                       "SELECT workflow, app_id, 'AWAITING_PARENTS', 1 FROM tasks "
                       "WHERE id = %s RETURNING id", (parent,)).fetchone()[0]
    su.execute("INSERT INTO task_deps (child_id, parent_id) VALUES (%s, %s)",
               (child, parent))
    lease, claimed = lease_and_claim(store)
    assert claimed == [parent]
    member.execute("SELECT count(*) FROM tasks_kill(%s::bigint[])", ([child],))
    end = [Finished(parent, lease.epoch, int(EndKind.DONE), 0, T0, T0 + 1)]
    start = [Started(parent, lease.epoch, T0)]
    answers: list[Any] = []
    assert run_while_held(lambda: answers.append(store.report_unlocked(lease, start, end)))
    assert answers[0].deferred == {parent}
    member.rollback()
    answer = store.report_unlocked(lease, start, end)
    assert answer.deferred == frozenset()
    rows = dict(conn.execute("SELECT id, state::text FROM tasks").fetchall())
    assert rows == {parent: "JOB_FINISHED", child: "READY"}


def test_the_heartbeat_is_not_behind_a_flush_held_up(store: Store, conn: Any, member: Any,
                                                     pg_project: Project, dbname: str
                                                     ) -> None:
    [task] = setup_tasks(conn, 1)
    lease, claimed = lease_and_claim(store)
    assert claimed == [task]
    member.execute("SELECT count(*) FROM tasks_kill(%s::bigint[])", ([task],))
    with Store(db.connect(pg_project, dbname=dbname, autocommit=True), pg_project) as side, \
            DbThread(store) as main_thread, \
            DbThread(side, wake_fd=main_thread.wake_fd, name="side") as side_thread:
        calls = leader_calls(main_thread, side_thread)
        # Any statement held up on the leader's connection: here, the plain write, which
        # waits for the member's lock.
        calls.start("flush", store.report, lease, [Started(task, lease.epoch, T0)], [])
        deadline = time.monotonic() + PATIENCE_S
        while not waits_on_a_lock(conn, store.conn.info.backend_pid):
            assert time.monotonic() < deadline, "the flush never reached the lock"
            time.sleep(0.02)
        watch = LeaseWatch(calls, store, lease, lease_s=60.0, heartbeat_s=0.01,
                           expire_check_s=3600.0, beat_store=side)
        before = watch.last_beat
        time.sleep(0.05)
        watch.heartbeat()
        while watch.last_beat == before and time.monotonic() < deadline:
            calls.collect()
            time.sleep(0.02)
        renewed = watch.last_beat > before
        still_held = waits_on_a_lock(conn, store.conn.info.backend_pid)
        member.rollback()
        calls.settle(PATIENCE_S)
    assert renewed and still_held, "the heartbeat waited behind the held-up flush"


def _waited(fn: Callable[[], object], watcher: Any, pid: int) -> bool:
    """Run ``fn`` on a thread; True if the backend ``pid`` waited for a lock meanwhile."""
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    waited = False
    while thread.is_alive():
        waited = waited or waits_on_a_lock(watcher, pid)
        thread.join(0.02)
    return waited


def test_after_a_held_row_flushes_lock_first_for_a_while(store: Store, conn: Any,
                                                          member: Any) -> None:
    """The plain write comes first, under the short lock_timeout (locking every row
    first cost each flush about 45% more database time per task); after a row was held
    past it, flushes lock first for CONTENDED_S instead of waiting it out each time."""
    ids = setup_tasks(conn, 2)
    lease, claimed = lease_and_claim(store)
    assert claimed == ids
    member.execute("SELECT count(*) FROM tasks_kill(%s::bigint[])", ([ids[1]],))
    pid = store.conn.info.backend_pid
    answers: list[Any] = []

    def flush() -> None:
        answers.append(store.report_unlocked(lease, [Started(ids[1], lease.epoch, T0)], []))

    assert _waited(flush, conn, pid)  # the plain write, then the lock-first one
    assert store.contended_until > time.monotonic()
    assert not _waited(flush, conn, pid)  # straight to the lock-first write
    store.contended_until = 0.0
    assert _waited(flush, conn, pid)
    assert [a.deferred for a in answers] == [{ids[1]}] * 3
