"""Placement that keeps promises (no MPI, no database): the leader's own node before a
busy node's queue, reserved nodes given back when the waiting task is killed, kills
forgotten once sent, and a dead worker's work written as lost or handed on."""

from __future__ import annotations

import pytest

from balsam_mpi.launcher.dispatch import Dispatcher
from balsam_mpi.launcher.workerview import WorkerView
from balsam_mpi.node.node import Node
from balsam_mpi.node.nullnode import NullNode
from balsam_mpi.protocol import Assign, Drain, Report, RunOrder

pytestmark = pytest.mark.timeout(60)


def order(i: int, need: float = 1.0, nodes: int = 1) -> RunOrder:
    return RunOrder(i, 1, ("true",), f"/nonexistent/{i}", need=need, num_nodes=nodes,
                    ranks_per_node=2 if nodes > 1 else 1)


def setup(n: int, local: Node | None = None) -> tuple[Dispatcher, list[tuple[int, object]]]:
    sent: list[tuple[int, object]] = []
    d = Dispatcher(local or NullNode(die_with_parent=False), lambda r, m: sent.append((r, m)),
                   margin=1.0, margin_max=1.0)
    for r in range(1, n + 1):
        d.workers[r] = WorkerView(r, host=f"h{r}")
    return d, sent


def tasks_to(sent: list[tuple[int, object]], rank: int) -> list[int]:
    return [t.id for r, m in sent if r == rank and isinstance(m, Assign) for t in m.tasks]


class BusyLocal(NullNode):
    """A leader's node whose tasks keep running (they only record their start)."""

    def _start(self, order: RunOrder) -> None:
        self.res.take(order.id, min(order.need, 1.0), order.gpus)
        self.running[order.id] = None  # type: ignore[assignment]


def test_the_leaders_node_gets_work_before_a_busy_nodes_queue() -> None:
    """15.11: four claimed tasks waited 45 s on busy workers while the leader's own node
    sat idle. A worker running a long task still has a margin (room to queue one more);
    the idle leader's node must take the task first."""
    local = BusyLocal(die_with_parent=False)
    d, sent = setup(1, local)
    busy = d.reported(1, Report(rank=1, acked=0, free=0.0, running=1, queued=0))
    d.pool.extend([order(1)])
    d.push()
    local.step()  # as the leader's loop does after placing
    assert tasks_to(sent, 1) == [] and list(local.running) == [1]
    # Answering the busy worker's next report: the pool's next task still goes here
    # while this node has room, and only then into the worker's queue.
    local.res.release(1)
    local.running.clear()
    d.pool.extend([order(2), order(3)])
    d.fill_local(margin=False)
    d.assign_to(busy, always=True)
    local.step()
    assert list(local.running) == [2] and tasks_to(sent, 1) == [3]


def test_killing_a_waiting_multi_node_task_frees_its_reserved_nodes() -> None:
    """15.10: the nodes kept for a waiting multi-node task idled until the next claim
    after it was killed."""
    d, sent = setup(2)
    d.local_open = False
    for r in (1, 2):  # both busy: the two-node task must wait, and reserves them
        d.reported(r, Report(rank=r, acked=0, free=0.5, running=1, queued=0))
    d.pool.extend([order(10, nodes=2)])
    d.push()
    assert d.reserved == {1, 2} and list(d.big) and not d.pool
    d.pool.extend([order(11, need=0.5), order(12, need=0.5)])
    d.push()
    assert tasks_to(sent, 1) == tasks_to(sent, 2) == []  # kept free for the big one
    assert d.kill([10]) == 0  # it never went out
    assert not d.big and not d.reserved
    assert sorted(tasks_to(sent, 1) + tasks_to(sent, 2)) == [11, 12]


def test_a_killed_queued_task_is_not_polled_for_the_rest_of_the_run() -> None:
    """15.10: tasks dropped from a node's queue stayed in the kill tracker for good."""
    d, sent = setup(1)
    d.local_open = False
    view = d.reported(1, Report(rank=1, acked=0, free=1.0, running=0, queued=0))
    d.pool.extend([order(1, need=0.5), order(2, need=0.5), order(3, need=0.5)])
    d.assign_to(view)
    assert sorted(d.kills.where) == [1, 2, 3]
    d.kill([3])  # queued there: the node drops it without a report
    assert sent[-1] == (1, Assign(sent[-1][1].seq, (), (3,)))  # type: ignore[union-attr]
    assert 3 not in d.kills.where and 3 not in d.kills.candidates()
    d.kills.ended([1, 2])
    assert not d.kills.where and not d.kills.due()


def test_a_dead_workers_running_tasks_are_lost_and_its_queue_goes_elsewhere() -> None:
    d, sent = setup(2)
    d.local_open = False
    for r in (1, 2):
        d.reported(r, Report(rank=r, acked=0, free=1.0, running=0, queued=0))
    d.pool.extend([order(1, need=0.5), order(2, need=0.5), order(3, need=0.5)])
    d.assign_to(d.workers[1])
    assert tasks_to(sent, 1) == [1, 2, 3]  # 1.0 free + 1.0 margin
    d.kills.began([1, 2])  # their starts were reported; 3 waits in that node's queue
    lost, handed = d.bury(1, "worker rank 1 on h1 stopped answering")
    assert sorted(lost) == [1, 2] and handed == 1
    assert tasks_to(sent, 2) == [3]  # reassigned at once
    assert any(r == 1 and isinstance(m, Drain) and m.cut for r, m in sent)  # should it wake
    assert not d.workers[1].alive and 1 not in d.kills.where.values()


def test_a_dead_head_releases_the_other_nodes_of_its_task() -> None:
    d, sent = setup(3)
    d.local_open = False
    for r in (1, 2, 3):
        d.reported(r, Report(rank=r, acked=0, free=1.0, running=0, queued=0))
    d.pool.extend([order(9, nodes=2)])
    d.push()
    [head] = [r for r, m in sent if isinstance(m, Assign) and m.tasks]
    [holder] = [r for r, m in sent if isinstance(m, Assign) and m.hold]
    d.kills.began([9])
    lost, _ = d.bury(head, "gone")
    assert lost == [9]
    assert sent[-1][0] == holder and sent[-1][1].release == (9,)  # type: ignore[union-attr]
    assert not d.spans and not d.in_big
