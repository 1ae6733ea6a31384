"""Handing back between launchers (launcher/giveback.py, migration 0015): tasks one
launcher holds queued, never started, go back to the database when another launcher has
free slots and its claims find nothing — and run there, once. Two leaders over one
in-memory store (tests/unit/slotkit.py: nodes with slots)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from balsam_mpi.launcher.storeport import ClaimFilter
from tests.unit.leaderkit import Kit, make
from tests.unit.slotkit import SlotNode, SlotWorker

pytestmark = pytest.mark.timeout(60)

BEAT_S = 0.02  # the hunger beat, short for the test (0.5 s in a launcher)


def holder(tmp_path: Path, tasks: int = 12) -> Kit:
    """Launcher A: two workers of 4 slots (its own node closed); a full first claim
    queues 2 tasks on each beside 4 running (their margins)."""
    kit = make(tmp_path / "a", workers=2, node=SlotNode(), finish=False)
    assert kit.comm is not None
    kit.comm.inbox.clear()
    kit.workers = [SlotWorker(kit.comm, r) for r in (1, 2)]
    kit.store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "w"}
                         for _ in range(tasks)])
    kit.leader.dispatch.local_open = False
    kit.leader.giveback.beats.interval_s = BEAT_S
    return kit


def hungry(tmp_path: Path, a: Kit, **filters: tuple[str, ...]) -> Kit:
    """Launcher B on the same store: its own node of 4 slots. With workflow filters it
    first claims one task of its own (so it stays up, 3 slots free); then its claims find
    nothing."""
    workflows = filters.get("workflows", ())
    if workflows:
        a.store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": workflows[0]}])
    b = make(tmp_path / "b", store=a.store, node=SlotNode(), finish=False,
             workflows=workflows)
    b.store.jobs[b.lease.job_id].filters = ClaimFilter(workflows)  # as open_job records
    b.leader.giveback.beats.interval_s = BEAT_S
    return b


def turn(kits: list[Kit], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for k in kits:
            for w in k.workers:
                w.answer()
            if k.leader.ended is None:
                k.leader.turn()
        time.sleep(0.001)


def nodes(kit: Kit) -> list[SlotNode]:
    local = kit.node
    assert isinstance(local, SlotNode)
    return [local] + [w.node for w in kit.workers]  # type: ignore[attr-defined]


def starts(*kits: Kit) -> Counter[int]:
    return sum((n.starts for k in kits for n in nodes(k)), Counter())


def test_queued_tasks_go_to_the_launcher_with_free_slots_and_run_once(
        tmp_path: Path) -> None:
    a = holder(tmp_path)
    turn([a], 0.2)
    queued = {o.id for n in nodes(a) for o in n.queue}
    assert len(queued) == 4 and not a.leader.dispatch.scarce
    b = hungry(tmp_path, a)
    turn([a, b], 1.0)
    b_node = nodes(b)[0]
    assert set(b_node.sim) == queued  # B runs what A had queued
    assert not any(n.queue for n in nodes(a))
    assert a.leader.giveback.given == 4
    for k in (a, b):  # the rest ends; both launchers go idle and close
        for n in nodes(k):
            n.end_all()
    turn([a, b], 0.5)
    assert set(a.states().values()) == {"JOB_FINISHED"}
    counted = starts(a, b)
    assert len(counted) == 12 and set(counted.values()) == {1}
    assert a.leader.ended == "idle" and b.leader.ended == "idle"


def test_nothing_goes_back_for_a_launcher_whose_filters_do_not_take_it(
        tmp_path: Path) -> None:
    a = holder(tmp_path)
    turn([a], 0.2)
    queued = {o.id for n in nodes(a) for o in n.queue}
    b = hungry(tmp_path, a, workflows=("other",))
    turn([a, b], 0.6)
    assert b.store.jobs[b.lease.job_id].hungry_at is not None  # B is hungry…
    assert {o.id for n in nodes(a) for o in n.queue} == queued  # …but not for these
    assert a.leader.giveback.given == 0 and len(nodes(b)[0].sim) == 1


def test_a_launcher_that_stopped_being_hungry_takes_nothing_more(tmp_path: Path) -> None:
    """B is hungry, then gets work of its own (a full claim): A keeps its queue."""
    a = holder(tmp_path)
    turn([a], 0.2)
    queued = {o.id for n in nodes(a) for o in n.queue}
    b = hungry(tmp_path, a, workflows=("mine",))
    turn([a, b], 0.3)
    assert b.store.jobs[b.lease.job_id].hungry_at is not None
    a.store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "mine"}
                       for _ in range(12)])
    turn([a, b], 0.6)
    assert b.store.jobs[b.lease.job_id].hungry_at is None
    assert {o.id for n in nodes(a) for o in n.queue} == queued
    assert a.leader.giveback.given == 0


def test_the_database_releases_only_the_callers_unstarted_claims(tmp_path: Path) -> None:
    """give_back at the port: another job's claims, started tasks and a stale epoch are
    not released, whatever ids are named."""
    a = holder(tmp_path)
    turn([a], 0.2)
    store = a.store
    b = hungry(tmp_path, a)
    turn([b], 0.1)  # B's claim finds nothing: hungry
    running = [i for n in nodes(a) for i in n.sim]
    queued = [o.id for n in nodes(a) for o in n.queue]
    stale = a.lease.__class__(a.lease.job_id, a.lease.epoch + 1, False)
    assert store.give_back(stale, queued) == []
    assert store.give_back(b.lease, queued) == []  # not B's to give
    assert store.give_back(a.lease, running) == []  # started
    assert sorted(store.give_back(a.lease, queued)) == sorted(queued)
    assert all(store.tasks[i].batch_job_id is None for i in queued)
    assert store.hunger(a.lease, hungry=False, holding=True) is False  # none left


def test_a_release_that_fails_keeps_the_tasks_and_a_drain_sends_none_out(
        tmp_path: Path) -> None:
    """The database away during a release: the tasks stay claimed and run here. A
    launcher that starts draining hands nothing back and gives the nodes nothing more."""
    from balsam_mpi.base.errors import ServerError

    a = holder(tmp_path)
    turn([a], 0.2)
    queued = {o.id for n in nodes(a) for o in n.queue}
    b = hungry(tmp_path, a)
    a.store.fail("give_back", ServerError("lost the database connection: gone"), times=10**4)
    turn([a, b], 0.6)
    assert a.leader.giveback.given == 0
    assert all(a.store.tasks[i].batch_job_id == a.lease.job_id for i in queued)
    a.leader.start_drain("wall time")
    assert a.leader.giveback.stopped and not a.leader.dispatch.others_hungry
    calls = len(a.store.calls)
    a.leader.giveback.step()
    assert a.store.calls[calls:] == []  # no hunger call, no release


def test_what_the_hungry_launcher_cannot_take_stays_and_is_not_offered_again(
        tmp_path: Path) -> None:
    """A queues tasks of two workflows; B is hungry for one of them only. B gets those;
    the others come back to A once (one release per answer, not one per turn)."""
    a = make(tmp_path / "a", workers=2, node=SlotNode(), finish=False)
    assert a.comm is not None
    a.comm.inbox.clear()
    a.workers = [SlotWorker(a.comm, r) for r in (1, 2)]
    a.store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": wf}
                       for wf in ["x"] * 8 + ["y", "x", "y", "x"]])
    a.leader.dispatch.local_open = False
    a.leader.giveback.beats.interval_s = BEAT_S
    turn([a], 0.2)
    queued = {o.id: a.store.tasks[o.id].workflow for n in nodes(a) for o in n.queue}
    assert sorted(queued.values()) == ["x", "x", "y", "y"]
    b = hungry(tmp_path, a, workflows=("y",))
    turn([a, b], 1.0)
    ys = {i for i, wf in queued.items() if wf == "y"}
    assert ys <= set(nodes(b)[0].sim)
    assert a.leader.giveback.given == 2
    releases = a.store.calls.count("give_back")
    assert releases <= 3, releases  # not a release per turn of the loop
    xs = {i for i, wf in queued.items() if wf == "x"}
    assert all(a.store.tasks[i].batch_job_id == a.lease.job_id for i in xs)


def test_a_launcher_that_exits_when_idle_waits_for_what_others_hold_for_it(
        tmp_path: Path) -> None:
    """--idle-timeout 0: B's claims find nothing, but A holds 4 tasks queued, unstarted,
    that B's filters take. A renews its heartbeat (every 50 ms here) before it hears of
    B's hunger (its beat: 0.3 s here; 0.25 s beside a heartbeat of up to 0.5 s in a
    launcher): B must not leave as soon as it has seen A alive."""
    a = holder(tmp_path)
    turn([a], 0.2)
    queued = {o.id for n in nodes(a) for o in n.queue}
    assert len(queued) == 4
    a.leader.giveback.beats.interval_s = 0.3
    b = make(tmp_path / "b", store=a.store, node=SlotNode(), finish=False,
             idle_timeout_s=0.0)
    b.leader.giveback.beats.interval_s = BEAT_S
    turn([a, b], 1.0)
    assert set(nodes(b)[0].sim) == queued
    assert b.leader.ended is None  # still running them


def test_an_idle_launcher_leaves_when_nobody_holds_anything_for_it(tmp_path: Path) -> None:
    """The same launcher with nothing held elsewhere for it leaves at once."""
    a = holder(tmp_path)
    turn([a], 0.2)
    b = make(tmp_path / "b", store=a.store, node=SlotNode(), finish=False,
             idle_timeout_s=0.0, workflows=("other",))
    b.store.jobs[b.lease.job_id].filters = ClaimFilter(("other",))
    b.leader.giveback.beats.interval_s = BEAT_S
    turn([a, b], 0.3)
    assert b.leader.ended == "idle"
    assert not nodes(b)[0].sim and a.leader.giveback.given == 0
