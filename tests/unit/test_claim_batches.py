"""How much a claim asks for once the nodes run (over the in-memory store, with nodes
whose tasks run until the test ends them): a claim per ended task is a database round
trip per task, so a claim also asks for some of the nodes' margins ahead, held in the
leader's pool (claims.AHEAD), and the next ends are refilled from there; with no margins
(work running out) each end is claimed for at once, as before."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from balsam_mpi.launcher.memstore import MemStore
from tests.unit.leaderkit import Kit, make
from tests.unit.slotkit import SlotNode, SlotWorker

pytestmark = pytest.mark.timeout(60)

SLOTS = 4  # per node (node_packing_count)


def _kit(tmp_path: Path, tasks: int, **settings: float) -> tuple[Kit, list[SlotNode]]:
    store = MemStore()
    store.add_app("a")
    store.add_tasks([{"app": "a", "node_packing_count": SLOTS} for _ in range(tasks)])
    kit = make(tmp_path, store=store, workers=2, node=SlotNode(), finish=False,
               **settings)
    assert kit.comm is not None
    kit.comm.inbox.clear()
    kit.workers = [SlotWorker(kit.comm, r) for r in (1, 2)]
    nodes = [kit.node] + [w.node for w in kit.workers]  # type: ignore[attr-defined]
    return kit, nodes  # type: ignore[return-value]


def _settled(kit: Kit, nodes: list[SlotNode], queued: int) -> None:
    """Turn the leader until every slot runs and every queue holds ``queued`` tasks."""
    kit.turns(lambda: not kit.leader.claims.in_flight
              and all(len(n.sim) == SLOTS and len(n.queue) >= queued for n in nodes))


def _quiet(kit: Kit, turns: int = 5) -> None:
    """A few turns of the leader and its workers (reports read, a claim answered and
    placed), then until no claim is in flight."""
    done = iter(range(turns))
    kit.turns(lambda: next(done, None) is None and not kit.leader.claims.in_flight)
    for n in [kit.node] + [w.node for w in kit.workers]:  # type: ignore[attr-defined]
        n.step()


def test_tasks_ending_one_by_one_are_refilled_from_the_pool_without_an_idle_slot(
        tmp_path: Path) -> None:
    """Before: 60 ends one at a time, every slot and queue full between them, brought a
    claim each (60 claims of one task). A claim now also asks for a quarter of the nodes'
    margins (claims.AHEAD: 3 of the 3 nodes' 12 queued tasks), held in the leader's pool,
    and the next ends are refilled from there: a claim per 4 ends, and no slot waits."""
    kit, nodes = _kit(tmp_path, 400, claim_margin=1.0, claim_margin_max=1.0)
    _settled(kit, nodes, SLOTS)
    before = kit.store.calls.count("claim")
    for k in range(60):
        node = nodes[k % len(nodes)]
        node.end_all(1)  # one task ends; its queue's head takes the slot
        _quiet(kit)
        assert all(len(n.sim) == SLOTS for n in nodes), k  # never an idle slot
    claims = kit.store.calls.count("claim") - before
    assert claims <= 60 // 4, claims  # one claim per 4 ends at most


def test_a_slot_that_would_idle_is_claimed_for_at_once(tmp_path: Path) -> None:
    """With no margins (claim_margin 0) nothing is queued behind the running tasks: each
    end frees a slot with nothing to start, and the claim goes at once."""
    kit, nodes = _kit(tmp_path, 400, claim_margin=0.0, claim_margin_max=0.0)
    _settled(kit, nodes, 0)
    before = kit.store.calls.count("claim")
    for k in range(6):
        nodes[k % len(nodes)].end_all(1)
        _settled(kit, nodes, 0)  # refilled: every slot runs again
    assert kit.store.calls.count("claim") - before == 6


def test_the_close_says_how_many_claims_brought_how_many_tasks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What the benchmarks read (benchmarks/measure.py: claims per task)."""
    from benchmarks.measure import claims_per_task

    kit = make(tmp_path, 10)
    with caplog.at_level(logging.INFO, logger="balsam_mpi.leader"):
        assert kit.run() == "idle"
        assert kit.leader.finish("idle")
    line = next(r.getMessage() for r in caplog.records if "claims brought" in r.getMessage())
    sent = kit.leader.claims.sent
    assert line == f"{sent} claims brought 10 tasks" and sent >= 1
    assert claims_per_task({0: f"x\n{line}\n"}) == pytest.approx(sent / 10)
