"""No stranded tails: when the runnable pool cannot cover every node's queue margin, work
goes to free slots only, and tasks queued (never started) on a busy node are given back
and run on an idle one — never twice (tests/unit/slotkit.py: nodes with slots)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

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
