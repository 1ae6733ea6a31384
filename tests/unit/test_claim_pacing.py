"""Claim pacing where launchers meet (over the in-memory store): when a claim counts as
short (no margins then), how soon an idle launcher sees other jobs' work settle, how
often a launcher holding tasks renews its heartbeat for them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from balsam_mpi.launcher.claims import short
from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.orders import ClaimResult
from balsam_mpi.launcher.storeport import ClaimFilter
from balsam_mpi.protocol import RunOrder
from tests.unit.leaderkit import make

pytestmark = pytest.mark.timeout(60)


def result(*needs: float) -> ClaimResult:
    orders = [RunOrder(i, 1, ("true",), "/", need=n) for i, n in enumerate(needs, 1)]
    return ClaimResult(len(orders), orders, [], [], 1)


@pytest.mark.parametrize(("got", "limit", "want", "is_short"), [
    (result(), 8, 1.0, True),  # nothing at all
    (result(*[0.25] * 8), 8, 4.0, False),  # the limit was reached: maybe more there
    (result(*[0.25] * 4), 16, 1.0, False),  # exactly what was asked
    (result(*[0.25] * 3), 16, 1.0, True),  # room for one more, none came
    (result(0.5), 16, 0.9, False),  # a second half would not have fitted
    (result(0.25, 0.25), 16, 3.0, True),
])
def test_a_claim_is_short_when_it_left_room_for_another_of_its_rows(
        got: ClaimResult, limit: int, want: float, is_short: bool) -> None:
    assert short(got, limit, want) == is_short


def test_no_margins_after_a_short_claim_and_back_after_a_full_one(tmp_path: Path) -> None:
    store = MemStore()
    store.add_app("a")
    store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit = make(tmp_path, store=store, finish=False)
    d = kit.leader.dispatch
    kit.leader.claims.refill()  # asks for 1.5 nodes, finds half a node
    kit.calls.collect()
    assert d.scarce and d.margin(d.local_pace) == 0.0
    assert d.demand() == pytest.approx(kit.node.free())  # free slots only
    store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(40)])
    kit.leader.claims.next_at = 0.0
    kit.leader.claims.refill()
    kit.calls.collect()
    assert not d.scarce and d.margin(d.local_pace) > 0.0


def test_an_idle_launcher_looks_again_soon_while_live_jobs_hold_its_work(
        tmp_path: Path) -> None:
    """With claim_idle_s of 30 s, the run still ends soon after the job holding the only
    task renews its heartbeat: the waiting launcher looks every 0.1 s meanwhile."""
    store = MemStore()
    store.add_app("a")
    store.add_tasks([{"app": "a"}])
    other = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="x",
                           nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                           lease_sec=60)
    store.claim(other, limit=1, capacity=1.0, max_need=1.0, filters=ClaimFilter())
    kit = make(tmp_path, store=store, claim_idle_s=30.0)
    kit.turns(lambda: bool(kit.leader.claims.waiting_for))
    store.heartbeat(other)  # alive: it runs its own task
    began = time.monotonic()
    assert kit.run(limit_s=10.0) == "idle"
    assert time.monotonic() - began < 10.0


def test_a_launcher_holding_tasks_renews_its_heartbeat_often(tmp_path: Path) -> None:
    """heartbeat_s of 30 s, yet a leader with tasks out renews its heartbeat every half
    second, so launchers waiting on its work see it alive soon."""
    kit = make(tmp_path, workers=1, finish=False, heartbeat_s=30.0, lease_s=120.0)
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: all(kit.store.tasks[i].state == "RUNNING" for i in ids))
    before = kit.store.calls.count("heartbeat")
    deadline = time.monotonic() + 1.6
    kit.turns(lambda: time.monotonic() > deadline)
    assert kit.store.calls.count("heartbeat") - before >= 2



def test_with_the_database_away_heartbeats_keep_their_usual_period(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The frequent renewal holds only while heartbeats succeed: with the server away a
    leader holding tasks does not flood its database thread with failing heartbeats
    (they would go ahead of the writes that wait). The store records a call made while
    it is down as its reconnection, so the failed heartbeats are counted in the log."""
    kit = make(tmp_path, workers=1, finish=False, heartbeat_s=2.0, lease_s=60.0)
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: all(kit.store.tasks[i].state == "RUNNING" for i in ids))
    kit.store.down = True
    deadline = time.monotonic() + 3.0
    with caplog.at_level(logging.WARNING, logger="balsam_mpi.launcher.lease"):
        kit.turns(lambda: time.monotonic() > deadline)
    failed = [r for r in caplog.records if r.getMessage().startswith("heartbeat failed")]
    assert 1 <= len(failed) <= 3, len(failed)  # every 2 s for 3 s: not ten a second


def test_the_first_failed_heartbeat_ends_the_frequent_renewal(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The frequent renewal went on for the first `heartbeat_s` of an outage: a real
    launcher holding tasks logged `heartbeat failed` about ten times a second (95 lines
    in the first 10 s of a 25 s server stop). After one failure the usual period
    stands. (The store records a call made while it is down as its reconnection, so the
    failures are counted in the log.)"""
    kit = make(tmp_path, workers=1, finish=False, heartbeat_s=5.0, lease_s=60.0)
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: all(kit.store.tasks[i].state == "RUNNING" for i in ids))
    kit.store.down = True
    deadline = time.monotonic() + 2.0
    with caplog.at_level(logging.WARNING, logger="balsam_mpi.launcher.lease"):
        kit.turns(lambda: time.monotonic() > deadline)
    failed = [r for r in caplog.records if r.getMessage().startswith("heartbeat failed")]
    assert len(failed) <= 1, len(failed)
    kit.store.down = False  # back: the next due heartbeat renews, then often again
    kit.leader.lease_watch.beats.soon()
    kit.turns(lambda: kit.leader.lease_watch.silence() < 0.5)
    before = kit.store.calls.count("heartbeat")
    deadline = time.monotonic() + 1.6
    kit.turns(lambda: time.monotonic() > deadline)
    assert kit.store.calls.count("heartbeat") - before >= 2
