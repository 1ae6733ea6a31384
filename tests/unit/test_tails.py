"""No stranded tails: when the runnable pool cannot cover every node's queue margin, work
goes to free slots only, and tasks queued (never started) on a busy node are given back
and run on an idle one — never twice (tests/unit/slotkit.py: nodes with slots)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.protocol import Assign, Report, RunOrder
from tests.unit.leaderkit import Kit, make
from tests.unit.slotkit import SlotNode, SlotWorker

pytestmark = pytest.mark.timeout(60)


def slots_kit(tmp_path: Path, tasks: int, *, workers: int = 3, packing: int = 4,
              **settings: Any) -> tuple[Kit, list[int]]:
    """The leader's own node and ``workers`` worker nodes, ``packing`` slots each."""
    kit = make(tmp_path, workers=workers, node=SlotNode(), finish=False, **settings)
    assert kit.comm is not None
    kit.comm.inbox.clear()  # the plain fakes' HELLOs: slot workers say their own
    kit.workers = [SlotWorker(kit.comm, r) for r in range(1, workers + 1)]
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": packing}
                               for _ in range(tasks)])
    return kit, ids


def nodes(kit: Kit) -> list[SlotNode]:
    local = kit.node
    assert isinstance(local, SlotNode)
    return [local] + [w.node for w in kit.workers]  # type: ignore[attr-defined]


def settle(kit: Kit, seconds: float = 0.3) -> None:
    """Turn the loop (workers answering) for a while: every message answered, every
    claim and flush done."""
    deadline = time.monotonic() + seconds
    kit.turns(lambda: time.monotonic() > deadline)


def stranded(kit: Kit) -> list[tuple[int, int]]:
    """(queued, free slots) of every node, when some node holds queued tasks while
    another has a free slot; [] otherwise."""
    picture = [(len(n.queue), round(n.res.free / (1 / 4))) for n in nodes(kit)]
    if any(q for q, _ in picture) and any(f for _, f in picture):
        return picture
    return []


def run_in_waves(kit: Kit, limit: int = 8) -> tuple[int, list[list[tuple[int, int]]]]:
    """End every running task at once, wave after wave, until the leader ends; returns
    the number of waves and the stranded pictures seen at the start of each wave."""
    waves = 0
    seen = []
    while kit.leader.ended is None and waves < limit:
        settle(kit)
        if kit.leader.ended is not None:
            break
        if any(n.sim for n in nodes(kit)):
            waves += 1
            seen.append(stranded(kit))
            for n in nodes(kit):  # one after the other, each report answered first
                n.end_all()
                settle(kit, 0.02)
    return waves, seen


@pytest.mark.parametrize("tasks", [32, 40, 48, 56])
def test_the_last_wave_runs_on_every_free_slot(tmp_path: Path, tasks: int) -> None:
    """4 nodes × 4 slots, equal tasks: as many waves as the slots allow, however the
    work was first queued (the nodes' paces known after the first wave); never a node
    with a free slot while another holds queued tasks."""
    kit, ids = slots_kit(tmp_path, tasks)
    waves, seen = run_in_waves(kit)
    assert seen == [[] for _ in seen], f"queued beside free slots (queued, free): {seen}"
    assert waves == -(-tasks // 16)
    assert set(kit.states().values()) == {"JOB_FINISHED"}
    starts: Counter[int] = sum((n.starts for n in nodes(kit)), Counter())
    assert sorted(starts) == ids and set(starts.values()) == {1}


def test_just_above_the_slot_count(tmp_path: Path) -> None:
    """17 tasks on 16 slots: the 17th runs in the second wave whoever queued it; with
    the first wave's ends staggered (one node finishes first) it runs there."""
    kit, ids = slots_kit(tmp_path, 17)
    settle(kit)
    first = next(n for n in reversed(nodes(kit)) if not n.queue)
    first.end_all()  # this node is free first; the 17th, queued elsewhere, moves here
    settle(kit)
    assert sum(len(n.queue) for n in nodes(kit)) == 0, [
        (len(n.queue), n.res.free) for n in nodes(kit)]
    assert len(first.sim) >= 1
    waves, _ = run_in_waves(kit)
    assert waves == 1
    assert set(kit.states().values()) == {"JOB_FINISHED"}
    starts: Counter[int] = sum((n.starts for n in nodes(kit)), Counter())
    assert sorted(starts) == ids and set(starts.values()) == {1}


def started_once(kit: Kit, ids: list[int]) -> bool:
    starts: Counter[int] = sum((n.starts for n in nodes(kit)), Counter())
    return sorted(starts) == sorted(ids) and set(starts.values()) == {1}


def two_workers_queued(tmp_path: Path, **settings: Any) -> tuple[Kit, list[int]]:
    """Two workers (the leader's node closed), 4 slots each, 12 tasks: the first claim
    is full, so each worker runs 4 and queues 2 (its margin)."""
    kit, ids = slots_kit(tmp_path, 12, workers=2, **settings)
    kit.leader.dispatch.local_open = False
    settle(kit)
    a, b = (w.node for w in kit.workers)  # type: ignore[attr-defined]
    assert [len(a.sim), len(a.queue), len(b.sim), len(b.queue)] == [4, 2, 4, 2]
    return kit, ids


def finish(kit: Kit, limit: int = 8) -> None:
    for _ in range(limit):
        if kit.leader.ended is not None:
            return
        for n in nodes(kit):
            n.end_all()
        settle(kit, 0.1)


def test_a_recall_that_crosses_starts_moves_only_what_never_started(
        tmp_path: Path) -> None:
    """B is asked to give back its 2 queued tasks for A's free slots, but one of B's
    tasks ends before the recall arrives, so B starts one of them: only the other comes
    back (and runs on A); nothing runs twice."""
    kit, ids = two_workers_queued(tmp_path)
    wa, wb = kit.workers
    a, b = wa.node, wb.node  # type: ignore[attr-defined]
    wb.hold = True  # type: ignore[attr-defined]  # the recall is on its way to B
    a.end_all()  # A starts its queued 2; the pool is empty and nothing more to claim
    settle(kit)
    assert kit.leader.dispatch.scarce and kit.leader.dispatch.recalling
    asked = set(kit.leader.dispatch.recalling)
    assert asked == {o.id for o in b.queue}
    b.end_all(1)
    settle(kit)  # B starts the first of its queued tasks, still holding the recall
    [crossed] = asked & set(b.sim)
    wb.hold = False  # type: ignore[attr-defined]
    settle(kit)
    [moved] = asked - {crossed}
    assert moved in a.sim and crossed in b.sim and not b.queue
    assert not kit.leader.dispatch.recalling  # answered: the next recall may go
    finish(kit)
    assert set(kit.states().values()) == {"JOB_FINISHED"}
    assert started_once(kit, ids)


def test_a_given_back_claim_from_the_wrong_rank_is_ignored(tmp_path: Path) -> None:
    """A REPORT naming as returned a task the leader did not recall from that rank (a
    task queued elsewhere) changes nothing: the task runs once, where it was."""
    kit, ids = two_workers_queued(tmp_path)
    wa, wb = kit.workers
    b = wb.node  # type: ignore[attr-defined]
    queued_on_b = [o.id for o in b.queue]
    assert kit.comm is not None
    kit.comm.inbox.append((1, _with_returned(wa, queued_on_b)))
    settle(kit)
    assert not kit.leader.dispatch.pool
    assert [o.id for o in b.queue] == queued_on_b
    finish(kit)
    assert set(kit.states().values()) == {"JOB_FINISHED"}
    assert started_once(kit, ids)


def _with_returned(worker: Any, ids: list[int]) -> Report:
    """The worker's next REPORT, saying it gave these tasks back."""
    return replace(worker.node.report(worker.rank), returned=tuple(ids))


def test_a_recalled_worker_that_dies_gives_its_queue_back_once(tmp_path: Path) -> None:
    """B freezes with the recall unread and is declared dead: its queued tasks go back
    to the pool once (not again when a late answer comes) and run on A."""
    kit, ids = two_workers_queued(tmp_path, worker_timeout_s=0.3)
    wa, wb = kit.workers
    a, b = wa.node, wb.node  # type: ignore[attr-defined]
    queued_on_b = {o.id for o in b.queue}
    wb.silent = True
    a.end_all()
    settle(kit, 0.6)
    assert kit.leader.dead == {2}
    assert queued_on_b <= set(a.sim) | {o.id for o in a.queue}
    assert not kit.leader.dispatch.recalling and not kit.leader.dispatch.recall_seq
    late = _with_returned(wb, sorted(queued_on_b))
    assert kit.comm is not None
    kit.comm.inbox.append((2, late))  # it wakes: ignored (declared dead)
    settle(kit)
    for _ in range(4):
        a.end_all()
        settle(kit, 0.1)
    assert all(a.starts[i] == 1 for i in queued_on_b)
    assert not any(b.starts[i] for i in queued_on_b)


def test_a_node_gives_back_only_what_is_still_queued(tmp_path: Path) -> None:
    node = SlotNode()
    orders = [RunOrder(i, 1, ("true",), str(tmp_path), need=0.5) for i in range(1, 5)]
    node.apply(Assign(1, tuple(orders)))
    node.step()  # 1 and 2 start; 3 and 4 wait
    node.apply(Assign(2, recall=(2, 3)))
    report = node.report(1)
    assert report.returned == (3,) and report.acked == 2 and report.queued == 1
    node.end_all()
    node.step()
    assert set(node.sim) == {4} and node.starts[3] == 0
    assert node.report(1).returned == ()
