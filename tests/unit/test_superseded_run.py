"""A batch job started again after its run died without closing it (migration 0021, the
in-memory store as the SQL): the new run's leader does not count itself idle while the
dead run's tasks wait for that run's lease, and runs them once the sweep has requeued
them. The store's clock is the test's."""

from __future__ import annotations

from pathlib import Path

import pytest

from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.storeport import ClaimFilter
from balsam_mpi.protocol import Started
from tests.unit.fakeclock import Clock
from tests.unit.leaderkit import make

pytestmark = pytest.mark.timeout(60)


def test_the_new_run_waits_for_the_dead_runs_tasks_then_runs_them(tmp_path: Path) -> None:
    clock = Clock(1_900_000_000.0)
    store = MemStore(clock=clock)
    store.add_app("a")
    ids = store.add_tasks([{"app": "a"} for _ in range(3)])
    dead = store.open_job(job_id=None, scheduler="slurm", scheduler_job_id="77", host="h",
                          nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                          lease_sec=60.0)
    store.claim(dead, limit=3, capacity=3.0, max_need=1.0, filters=ClaimFilter())
    store.report(dead, [Started(i, dead.epoch, clock.now) for i in ids[:2]], [])
    clock.now += 10  # the run dies; the scheduler starts the job again
    kit = make(tmp_path, store=store, adopt=dead.job_id)
    assert kit.lease.epoch == dead.epoch + 1
    kit.turns(lambda: bool(kit.leader.claims.waiting_for), limit_s=10)
    assert kit.leader.claims.waiting_for == {dead.job_id}  # its own job's earlier run
    assert kit.leader.ended is None
    assert [store.tasks[i].state for i in ids] == ["RUNNING", "RUNNING", "READY"]
    clock.now += 51  # that run's lease (60 s from its last heartbeat) has run out
    assert kit.run() == "idle"
    tasks = [store.tasks[i] for i in ids]
    assert [t.state for t in tasks] == ["JOB_FINISHED"] * 3
    assert [t.lost_retries for t in tasks] == [1, 1, 0]  # the running ones were lost
    assert store.jobs[dead.job_id].superseded_until is None
