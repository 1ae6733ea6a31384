"""The end of a leader's run (launcher/closing.py) against its own heartbeat.

The heartbeat runs on the claims' connection, the close on the leader's, side by side. A
heartbeat sent while the close was on its way found the batch job closed — by this very
close — answered "not alive", and when that answer came back before the close's own the
leader took its lease for lost: "giving up the final write: the lease is lost", the
launcher's exit status 1, a journal left for a replay, though every report had been
written and the job closed (seen once in CI, in
tests/e2e/test_reliability.py::test_a_frozen_workers_tasks_are_dead_before_they_are_written_lost).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from balsam_mpi.launcher.calls import leader_calls
from balsam_mpi.launcher.closing import Closing
from balsam_mpi.launcher.dbthread import DbThread
from balsam_mpi.launcher.lease import LeaseWatch
from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.reports import ReportBuffer
from balsam_mpi.launcher.storeport import ClaimFilter, Lease

pytestmark = pytest.mark.timeout(60)

ANSWER_S = 0.3  # how long the close takes to answer once the job is closed


class SlowToAnswer(MemStore):
    """The close commits at once and answers ``ANSWER_S`` later (a server's reply on
    its way, the client reading it) — the window the heartbeat fell into."""

    def close_job(self, lease: Lease, state: str, reason: str) -> tuple[int, int]:
        counts = super().close_job(lease, state, reason)
        time.sleep(ANSWER_S)
        return counts


class Sleeper:
    """The leader's own node, which the closing loop only sleeps on."""

    def wait(self, timeout: float) -> bool:
        time.sleep(min(timeout, 0.01))
        return False


def closing(store: MemStore, main: DbThread, side: DbThread, heartbeat_s: float
            ) -> tuple[Closing, LeaseWatch]:
    lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None,
                           host="h", nodes=1, ranks=1, filters=ClaimFilter(),
                           wall_time_min=None, lease_sec=60.0)
    calls = leader_calls(main, side)
    watch = LeaseWatch(calls, store, lease, lease_s=60.0, heartbeat_s=heartbeat_s,
                       expire_check_s=3600.0)
    buffer = ReportBuffer(lease, store, calls, size=100, interval_s=0.1)
    node: Any = Sleeper()
    return Closing(calls, store, lease, buffer, watch, node), watch


def test_a_heartbeat_answered_by_the_close_itself_is_no_lost_lease(
        caplog: pytest.LogCaptureFixture) -> None:
    """Heartbeats due all along (every 1 ms), so some cross the close: the run ends
    closed, and no line says the lease was lost (failed before: the run gave up with
    "the lease is lost", the job closed all the same)."""
    store = SlowToAnswer()
    with DbThread(store, name="main") as main, \
            DbThread(store, wake_fd=main.wake_fd, name="side") as side:
        end, _watch = closing(store, main, side, heartbeat_s=0.001)
        assert end.run("done") is True
    assert [j.state for j in store.jobs.values()] == ["FINISHED"]
    assert store.calls.count("heartbeat") > 1
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def test_a_lease_really_lost_still_gives_up() -> None:
    """Another leader took the job (its epoch moved on) and a heartbeat is on its way as
    the run ends: its answer is heard before any close is sent, and the run gives up as
    before, what it held left in the journal's care."""
    store = MemStore()
    with DbThread(store, name="main") as main, \
            DbThread(store, wake_fd=main.wake_fd, name="side") as side:
        end, watch = closing(store, main, side, heartbeat_s=0.001)
        job = next(iter(store.jobs.values()))
        job.epoch += 1  # taken over
        time.sleep(0.002)
        watch.heartbeat()  # on its way
        assert end.run("done") is False
        assert watch.lost
        assert "close_job" not in store.calls
        assert job.state == "RUNNING"
