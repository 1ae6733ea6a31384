"""Handing back between real launchers (launcher/giveback.py, migration 0015): a launcher
holding queued tasks behind long ones gives them back when another launcher starts with
free slots and nothing to claim; they run there, once, in the first wave."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import needs_mpiexec
from tests.e2e.test_launcher import add, finish, launcher, running_events, states

pytestmark = [pytest.mark.timeout(240), needs_mpiexec]

SLEEP_S = 8  # long enough that the hand-back (about a second) beats the first wave's end


def wait_for(conn: Any, sql: str, want: int, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while (got := conn.execute(sql).fetchone()[0]) != want:
        assert time.monotonic() < deadline, f"{sql}: {got}, not {want}"
        time.sleep(0.1)


def test_queued_tasks_move_to_a_launcher_that_starts_with_free_slots(conn: Any,
                                                                    dbname: str) -> None:
    # One rank, 4 slots: the first claim takes 4 to run and 2 more queued (its margin).
    ids = add(conn, 6, command=f"sleep {SLEEP_S}", packing=4)
    a = launcher(1)
    wait_for(conn, "SELECT count(*) FROM tasks WHERE batch_job_id IS NOT NULL", 6)
    wait_for(conn, "SELECT count(*) FROM tasks WHERE state = 'RUNNING'", 4)
    [job_a] = conn.execute("SELECT DISTINCT batch_job_id FROM tasks").fetchone()
    t0 = time.monotonic()
    b = launcher(1, "--idle-timeout", "5")  # its claims find nothing: it is hungry
    finish(a)
    finish(b)
    assert states(conn) == {"JOB_FINISHED": 6}
    events = running_events(conn)
    assert sorted(events) == ids and set(events.values()) == {1}  # each ran once
    by_job = dict(conn.execute("SELECT batch_job_id, count(*) FROM tasks GROUP BY 1"
                               ).fetchall())
    assert by_job.pop(job_a) == 4 and list(by_job.values()) == [2], by_job
    # Both waves ran side by side: the two given back started long before A's first
    # four ended (they would otherwise have started after them).
    starts = conn.execute("SELECT batch_job_id = %s, extract(epoch FROM started_at), "
                          "extract(epoch FROM ended_at) FROM tasks", (job_a,)).fetchall()
    a_first_end = min(float(e) for mine, _, e in starts if mine)
    assert all(float(s) < a_first_end for mine, s, _ in starts if not mine), starts
    assert time.monotonic() - t0 < 3 * SLEEP_S
