"""The leader's loop over the in-memory store (no Postgres, no MPI, no processes): claims,
reports and their order, fencing, the four ways a run drains, dead workers, kills,
remote errors (tests/unit/leaderkit.py has the fakes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from balsam_mpi.base.errors import ServerError
from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.storeport import ClaimFilter
from balsam_mpi.node.nullnode import NullNode
from balsam_mpi.protocol import (
    Drain,
    EndKind,
    ErrorMsg,
    Finished,
    RemoteTraceback,
    RunOrder,
    WorkerFailed,
)
from tests.unit.leaderkit import make

pytestmark = pytest.mark.timeout(60)


class RecordingNode(NullNode):
    """A null node that remembers the order in which it started tasks."""

    def __init__(self) -> None:
        super().__init__(die_with_parent=False)
        self.order: list[int] = []

    def _start(self, order: RunOrder) -> None:
        self.order.append(order.id)
        super()._start(order)


def test_every_task_runs_once_and_the_batch_job_closes(tmp_path: Path) -> None:
    kit = make(tmp_path, 40)
    assert kit.run() == "idle"
    assert kit.leader.finish("idle")
    assert set(kit.states().values()) == {"JOB_FINISHED"}
    assert kit.node.started_total == 40 and kit.leader.buffer.written_finished == 40
    assert kit.store.jobs[kit.lease.job_id].state == "FINISHED"
    calls = kit.store.calls
    # Closed last: after every report was written, never while one was on its way.
    assert calls[-1] == "close_job" and "report" not in calls[calls.index("close_job"):]


def test_tasks_start_in_priority_order(tmp_path: Path) -> None:
    store = MemStore()
    store.add_app("a")
    ids = store.add_tasks([{"app": "a", "priority": p, "node_packing_count": 8}
                           for p in (0, 5, 1, 9, 5, -2)])
    node = RecordingNode()
    kit = make(tmp_path, store=store, node=node)
    kit.run()
    by_priority = sorted(ids, key=lambda i: (-store.tasks[i].priority, i))
    assert node.order == by_priority


def test_a_claim_asks_only_for_what_the_nodes_can_start(tmp_path: Path) -> None:
    """The leader's own node, idle: one node of room plus its margin (0.5 until its
    pace is known), so two half-node tasks and one more, never the whole queue."""
    store = MemStore()
    store.add_app("a")
    store.add_tasks([{"app": "a", "node_packing_count": 2} for _ in range(10)])
    kit = make(tmp_path, store=store)
    kit.leader.claims.refill()
    kit.calls.collect()
    assert kit.leader.claims.total == 3
    assert sum(t.batch_job_id is not None for t in store.tasks.values()) == 3


def test_a_flush_that_failed_for_the_connection_is_written_later_starts_first(
        tmp_path: Path) -> None:
    kit = make(tmp_path, workers=1, finish=False)
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(3)])
    kit.leader.dispatch.local_open = False  # everything to the worker
    kit.store.fail("report", ServerError("lost the database connection: gone"))
    kit.turns(lambda: kit.leader.buffer.retry.failing)
    assert all(kit.store.tasks[i].state == "READY" for i in ids)  # the starts are held
    assert sorted(kit.workers[0].end_all()) == ids  # the ends come behind them
    assert kit.run() == "idle"
    assert kit.leader.buffer.refused == 0
    assert set(kit.states().values()) == {"JOB_FINISHED"}


def test_reports_of_a_superseded_claim_are_refused_and_the_leader_stops(
        tmp_path: Path) -> None:
    """Fencing: once a newer leader has adopted the batch job, this one's ends change
    nothing, its heartbeat is refused, and it cuts its tasks off."""
    kit = make(tmp_path, workers=1, finish=False)
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: all(kit.store.tasks[i].state == "RUNNING" for i in ids))
    kit.store.open_job(job_id=kit.lease.job_id, scheduler="local", scheduler_job_id=None,
                       host="other", nodes=1, ranks=1, filters=ClaimFilter(),
                       wall_time_min=None, lease_sec=60)  # adopted: epoch 2
    for i in ids:  # which claimed the tasks again
        kit.store.tasks[i].lease_epoch = 2
    kit.workers[0].finish = True
    assert kit.run() == "lease lost"
    assert kit.leader.buffer.refused == 2  # the old claim's ends matched nothing
    assert all(kit.store.tasks[i].state == "RUNNING" for i in ids)  # the new epoch's now
    assert kit.comm.to(1, Drain)[0].cut  # type: ignore[union-attr]
    assert not kit.leader.finish("lease lost")  # and it does not close another's job
    assert kit.store.jobs[kit.lease.job_id].state == "RUNNING"


def test_a_signal_cuts_running_tasks_and_requeues_them(tmp_path: Path) -> None:
    kit = make(tmp_path, workers=1, finish=False)
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(3)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: all(kit.store.tasks[i].state == "RUNNING" for i in ids))
    kit.leader.stop_reason = "SIGTERM"
    assert kit.run() == "SIGTERM"
    assert kit.leader.finish("SIGTERM")
    assert all(kit.store.tasks[i].state == "RESTART_READY" for i in ids)
    assert all(kit.store.tasks[i].error_retries == 0 for i in ids)  # no retry spent


def test_wall_time_drains_before_the_end_and_starts_nothing(tmp_path: Path) -> None:
    kit = make(tmp_path, 5, deadline=time.time() + 29.0)  # drain_grace_s is 30
    assert kit.run() == "wall time"
    assert kit.leader.finish("wall time")
    assert kit.node.started_total == 0
    assert all(t.state == "READY" and t.batch_job_id is None
               for t in kit.store.tasks.values())  # claims released by the close


def test_half_a_lease_without_a_heartbeat_stops_the_tasks(tmp_path: Path) -> None:
    kit = make(tmp_path, workers=1, finish=False, lease_s=0.4)
    kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: bool(kit.workers[0].running))
    kit.store.down = True  # every call fails from now on, heartbeats too
    began = time.monotonic()
    assert kit.run().startswith("no heartbeat for")
    assert time.monotonic() - began >= 0.15  # not before about half the lease
    assert kit.comm.to(1, Drain)[0].cut  # type: ignore[union-attr]


def test_no_idle_exit_while_a_silent_job_holds_work_for_these_filters(
        tmp_path: Path) -> None:
    store = MemStore()
    store.add_app("a")
    store.add_tasks([{"app": "a"}])
    other = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="x",
                           nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                           lease_sec=60)
    store.claim(other, limit=1, capacity=1.0, max_need=1.0, filters=ClaimFilter())
    kit = make(tmp_path, store=store)
    kit.turns(lambda: bool(kit.leader.claims.waiting_for))
    deadline = time.monotonic() + 0.3
    kit.turns(lambda: time.monotonic() > deadline)
    assert kit.leader.ended is None and kit.leader.claims.waiting_for == {other.job_id}
    store.heartbeat(other)  # it is alive: it will run its own tasks
    assert kit.run() == "idle"


def test_a_worker_that_stops_answering_is_declared_dead_and_its_tasks_lost(
        tmp_path: Path) -> None:
    kit = make(tmp_path, workers=1, finish=False, worker_timeout_s=0.3)
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: all(kit.store.tasks[i].state == "RUNNING" for i in ids))
    kit.workers[0].silent = True
    kit.turns(lambda: kit.leader.dead == {1} and not kit.leader.buffer.pending)
    for i in ids:
        assert kit.store.tasks[i].state == "RESTART_READY"
        assert kit.store.tasks[i].lost_retries == 1  # counted, like a lost lease
    assert kit.comm.to(1, Drain)[-1].cut  # told to cut, should it wake  # type: ignore[union-attr]


def test_a_killed_task_is_stopped_on_its_node(tmp_path: Path) -> None:
    kit = make(tmp_path, workers=1, finish=False)
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: all(kit.store.tasks[i].state == "RUNNING" for i in ids))
    kit.store.kill(ids[1])
    kit.turns(lambda: bool(kit.workers[0].killed))
    assert kit.workers[0].killed == [ids[1]]
    assert kit.store.tasks[ids[1]].state == "USER_KILLED"  # the kill stands


def test_a_worker_error_is_raised_with_its_rank_host_type_and_traceback(
        tmp_path: Path) -> None:
    kit = make(tmp_path, workers=2)
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nKeyError: 7\n'
    kit.comm.inbox.append((2, ErrorMsg(2, "nid0002", tb, exc_type="KeyError",  # type: ignore[union-attr]
                                       message="7")))
    with pytest.raises(WorkerFailed) as err:
        kit.turns(lambda: False)
    assert str(err.value) == "rank 2 on nid0002 failed: KeyError: 7"
    cause = err.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "rank 2 on nid0002" in str(cause) and "KeyError: 7" in str(cause)


def test_a_report_the_store_cannot_take_fails_its_task_alone(tmp_path: Path) -> None:
    kit = make(tmp_path, 12)
    poisoned = sorted(kit.store.tasks)[7]
    kit.store.poison = {poisoned}
    assert kit.run() == "idle"
    assert kit.leader.finish("idle")
    states = kit.states()
    assert states.pop(poisoned) == "FAILED"
    assert "could not store its report" in kit.store.tasks[poisoned].state_message
    assert set(states.values()) == {"JOB_FINISHED"}


def test_a_claim_that_fails_is_retried_after_a_growing_pause(tmp_path: Path) -> None:
    kit = make(tmp_path, 3)
    kit.store.fail("claim", ServerError("lost the database connection: gone"), times=2)
    kit.leader.claims.refill()
    kit.calls.collect()
    first = kit.leader.claims.retry.pause
    assert first > 0 and kit.leader.claims.next_at > time.monotonic()
    kit.leader.claims.next_at = 0.0  # (skip the wait)
    kit.leader.claims.refill()
    kit.calls.collect()
    assert kit.leader.claims.retry.pause > first
    assert kit.run() == "idle" and set(kit.states().values()) == {"JOB_FINISHED"}
    assert not kit.leader.claims.retry.failing


def test_ended_tasks_written_make_the_next_claim_come_at_once(tmp_path: Path) -> None:
    """A parent's end, written, may make children READY: the claim after that flush is
    not held back by claim_idle_s, and the run only ends once it found nothing."""
    store = MemStore()
    store.add_app("a")
    [parent] = store.add_tasks([{"app": "a"}])
    [child] = store.add_tasks([{"app": "a", "parents": [parent]}])
    kit = make(tmp_path, store=store, claim_idle_s=30.0)
    began = time.monotonic()
    assert kit.run() == "idle"
    assert time.monotonic() - began < 10.0
    assert kit.states() == {parent: "JOB_FINISHED", child: "JOB_FINISHED"}


def test_end_kinds_reach_the_store_as_the_nodes_said(tmp_path: Path) -> None:
    """What a node reports (here a failure with retries left) is what the store applies."""
    kit = make(tmp_path, workers=1, finish=False)
    [task] = kit.store.add_tasks([{"app": "a", "error_retry_limit": 1}])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: kit.store.tasks[task].state == "RUNNING")
    order = kit.workers[0].running[task]
    kit.workers[0].end(Finished(task, order.epoch, int(EndKind.ERROR), 3, 1.0, 2.0, "boom"))
    kit.turns(lambda: kit.store.tasks[task].state != "RUNNING")
    assert kit.store.tasks[task].state == "RESTART_READY"
    assert kit.store.tasks[task].error_retries == 1


def test_the_last_reports_are_written_at_once_when_nothing_runs(tmp_path: Path) -> None:
    """A flush interval of 30 s: reports wait for company while tasks run, but once every
    node is idle the batch cannot grow, so the run ends without waiting it out."""
    kit = make(tmp_path, 8, flush_interval_s=30.0)
    began = time.monotonic()
    assert kit.run(limit_s=10.0) == "idle"
    assert set(kit.states().values()) == {"JOB_FINISHED"}
    assert time.monotonic() - began < 10.0


@pytest.mark.parametrize("patience_s, lease_s", [(1.5, 0.4), (1.0, 2.0)])
def test_the_final_write_gives_up_after_close_patience_s_or_the_lease(
        tmp_path: Path, patience_s: float, lease_s: float) -> None:
    """With the database away at the end, the close is retried until the lease has gone
    unrenewed for close_patience_s or the whole lease, the longer (the default, 30 s,
    would hold this test past its bound)."""
    kit = make(tmp_path, 2, lease_s=lease_s, kill_grace_s=0.1, close_patience_s=patience_s)
    assert kit.run() == "idle"
    kit.store.down = True
    began = time.monotonic()
    assert not kit.leader.finish("idle")
    waited = time.monotonic() - began
    assert max(patience_s, lease_s) - 0.2 <= waited < 15.0, waited
