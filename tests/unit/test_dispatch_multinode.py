"""The leader's placement of multi-node tasks: whole idle workers, a head and holds, a
reservation for the oldest waiting one, releases when it ends (no MPI, no database)."""

from __future__ import annotations

from pathlib import Path

from balsam_mpi.launcher.dispatch import Dispatcher
from balsam_mpi.launcher.workerview import WorkerView
from balsam_mpi.node.node import Node
from balsam_mpi.protocol import Assign, EndKind, Finished, Report, RunOrder


def setup(n_workers: int) -> tuple[Dispatcher, list[tuple[int, Assign]]]:
    sent: list[tuple[int, Assign]] = []
    local = Node(environ={"PATH": "/bin"}, die_with_parent=False)
    d = Dispatcher(local, lambda rank, msg: sent.append((rank, msg)))
    d.local_open = False  # workers only here (the leader's node would take small tasks first)
    for r in range(1, n_workers + 1):
        d.workers[r] = WorkerView(r, host=f"h{r}")
    return d, sent


def task(i: int, nodes: int = 1, need: float = 0.25) -> RunOrder:
    return RunOrder(i, 1, ("true",), f"/tmp/none/{i}", need=1.0 if nodes > 1 else need,
                    num_nodes=nodes, ranks_per_node=2 if nodes > 1 else 1)


def test_a_two_node_task_gets_a_head_and_a_hold_then_a_release() -> None:
    d, sent = setup(3)
    assert d.max_nodes() == 3
    d.pool.extend([task(1, nodes=2), task(2)])
    d.push()
    heads = [(r, m) for r, m in sent if m.tasks and m.tasks[0].id == 1]
    holds = [(r, m) for r, m in sent if m.hold]
    assert len(heads) == 1 and len(holds) == 1
    (head, msg), (holder, hold) = heads[0], holds[0]
    assert msg.tasks[0].hosts == (f"h{head}", f"h{holder}") and hold.hold[0].id == 1
    assert head != holder
    # The small task went to the third worker, not to the task's nodes.
    small = [r for r, m in sent if any(t.id == 2 for t in m.tasks)]
    assert small and small[0] not in (head, holder)
    sent.clear()
    d.ended((Finished(1, 1, int(EndKind.DONE), 0, 0.0, 1.0),))
    assert sent == [(holder, Assign(sent[0][1].seq, release=(1,)))]
    d.ended((Finished(1, 1, int(EndKind.DONE), 0, 0.0, 1.0),))  # once only
    assert len(sent) == 1


def test_busy_workers_are_reserved_for_the_waiting_big_task() -> None:
    d, sent = setup(3)
    for r, running in ((1, 1), (2, 3), (3, 2)):
        d.reported(r, Report(r, 0, free=0.5, running=running, queued=0))
    d.pool.extend([task(1, nodes=2), *(task(i) for i in range(2, 6))])
    d.push()
    assert list(d.big) and d.reserved == {1, 3}  # the two closest to idle
    assert d.max_nodes() == 1  # no more big tasks claimed while one waits
    got = {r for r, m in sent if m.tasks}
    assert got == {2}  # small tasks only to the unreserved worker
    # The reserved workers empty: the big task starts on them.
    sent.clear()
    for r in (1, 3):
        d.assign_to(d.reported(r, Report(r, 0, free=1.0, running=0, queued=0)), always=True)
    assert not d.big and not d.reserved
    assert {r for r, m in sent if m.tasks and m.tasks[0].id == 1 or m.hold} == {1, 3}
    assert not d.all_idle()


def test_not_enough_workers_waits_without_reserving(tmp_path: Path) -> None:
    d, sent = setup(1)
    d.big.append(task(1, nodes=2))
    d.place_big()
    assert list(d.big) and not d.reserved and not sent and not d.all_idle()
