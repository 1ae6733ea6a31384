"""Claim preference between launchers (launcher/preference.py): each claims its share of
a fair division of the runnable rows (launcher/division.py), so a launcher limited to a
workflow keeps that work and launchers with different filters end together."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from balsam_mpi.launcher.division import Taker, kind, kind_parts
from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.preference import (
    MAX_TAG_FILTERS,
    MAX_TAKERS,
    RUNNABLE_SCAN_MAX,
    plan,
)
from balsam_mpi.launcher.storeport import ClaimFilter, Peers
from tests.unit import fakeclock
from tests.unit.fakeclock import FakeTime
from tests.unit.leaderkit import Kit, make
from tests.unit.slotkit import SlotNode

pytestmark = pytest.mark.timeout(60)


def launcher(tmp_path: Path, store: MemStore, name: str, *workflows: str) -> Kit:
    kit = make(tmp_path / name, store=store, node=SlotNode(), finish=False,
               workflows=workflows)
    kit.store.jobs[kit.lease.job_id].filters = ClaimFilter(workflows)  # as open_job does
    return kit


STEP_S = 0.001  # the clock's move between two rounds of turns
CLOCK = FakeTime()


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launchers run on a clock the tests move (tests/unit/fakeclock.py)."""
    global CLOCK
    CLOCK = fakeclock.install(monkeypatch)


def turn(kits: list[Kit], seconds: float) -> None:
    """Every launcher turns once per STEP_S of the clock, for ``seconds`` of it."""
    until = CLOCK.now + seconds
    while CLOCK.now < until:
        for k in kits:
            if k.leader.ended is None:
                k.leader.turn()
        CLOCK.sleep(STEP_S)


def turn_until(kits: list[Kit], done: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Turn the launchers until ``done()``, for at most ``limit_s`` of the clock."""
    deadline = CLOCK.now + limit_s
    while not done():
        assert CLOCK.now < deadline, "the launchers never got there"
        turn(kits, 0.01)


def claimed(store: MemStore, kit: Kit) -> Counter[str]:
    return Counter(t.workflow for t in store.tasks.values()
                   if t.batch_job_id == kit.lease.job_id)


def test_an_open_launcher_leaves_a_filtered_launchers_workflow_to_it(
        tmp_path: Path) -> None:
    store = MemStore()
    store.add_app("a")
    # wf_a first: by id alone, the open launcher would claim it before wf_d.
    store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "wf_a"}
                     for _ in range(12)])
    store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "wf_d"}
                     for _ in range(12)])
    only_a = launcher(tmp_path, store, "b", "wf_a")
    turn_until([only_a], lambda: sum(claimed(store, only_a).values()) >= 6)
    turn([only_a], 0.05)  # and no more
    assert claimed(store, only_a) == {"wf_a": 6}  # 4 slots and its margin
    open_one = launcher(tmp_path, store, "a")
    turn_until([only_a, open_one], lambda: sum(claimed(store, open_one).values()) >= 6)
    turn([only_a, open_one], 0.05)
    assert claimed(store, open_one) == {"wf_d": 6}  # wf_a is left to the other
    for k in (only_a, open_one):
        k.node.end_all()  # type: ignore[attr-defined]
    turn_until([only_a, open_one], lambda: claimed(store, only_a)["wf_a"] >= 12)
    assert claimed(store, only_a)["wf_a"] == 12 and "wf_a" not in claimed(store, open_one)


def run_out(kits: list[Kit], store: MemStore, rounds: int = 400) -> None:
    """Turn the launchers, ending every running task each round, until no row is left."""
    for _ in range(rounds):
        turn(kits, 0.01)
        for k in kits:
            k.node.end_all()  # type: ignore[attr-defined]
        if all(t.state == "JOB_FINISHED" for t in store.tasks.values()):
            return
    raise AssertionError("the rows were not all run")


def ran(store: MemStore, kit: Kit) -> int:
    return sum(claimed(store, kit).values())


def test_five_launchers_with_the_benchmarks_filters_run_equal_shares(
        tmp_path: Path) -> None:
    """Before the division, open launchers took rows of wf_a and wf_c in id order, and
    the launchers limited to them ran out early (docs/launcher.md)."""
    store = MemStore()
    store.add_app("a")
    # 80 rows for 5 launchers of 4 slots: 16 each when the open ones take wf_d and half
    # of wf_c. Greedy, they took wf_d, then wf_a's rows by id, and the wf_a launcher ran
    # out.
    for wf, n in (("wf_a", 16), ("wf_b", 16), ("wf_c", 32), ("wf_d", 16)):
        store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": wf}
                         for _ in range(n)])
    kits = [launcher(tmp_path, store, f"l{i}", *wfs) for i, wfs in enumerate(
        [("wf_a",), ("wf_b",), ("wf_a", "wf_c"), (), ()])]
    run_out(kits, store)
    # Within two rows of an even 16 (greedy: 12 to 20). Not exactly 16: here every task
    # ends in the same instant, and a launcher whose share is claimed takes rows for its
    # free slots (work-conserving) before a slower one claims the last of its own share.
    ran_each = [ran(store, k) for k in kits]
    assert sum(ran_each) == 80 and max(abs(n - 16) for n in ran_each) <= 2, \
        [claimed(store, k) for k in kits]


def test_a_launcher_that_joins_late_gets_its_share_of_the_rest(tmp_path: Path) -> None:
    store = MemStore()
    store.add_app("a")
    store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "wf_a"}
                     for _ in range(20)])
    store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "wf_d"}
                     for _ in range(2)])
    only_a = launcher(tmp_path, store, "b", "wf_a")
    turn([only_a], 0.1)
    open_one = launcher(tmp_path, store, "a")
    run_out([only_a, open_one], store)
    # 22 rows, 11 each (within a row): the 6 only_a held when the other came count
    # toward its load.
    assert abs(ran(store, only_a) - ran(store, open_one)) <= 2
    assert claimed(store, open_one)["wf_d"] == 2


@pytest.mark.parametrize("filters, peers, want", [
    (ClaimFilter(), Peers(("a", "d"), frozenset()), {}),  # no division read
    (ClaimFilter(), Peers(("a", "d"), frozenset({"a"}), {"a": 14, "d": 10},
                          (Taker(1, None, 1.0), Taker(2, frozenset({"a"}), 1.0))),
     {"a": 2.0, "d": 10.0}),  # 12 each: all of d, and the rest from a
    (ClaimFilter(("a",)), Peers(("a", "d"), frozenset(), {"a": 4, "d": 9},
                                (Taker(1, frozenset({"a"}), 1.0), Taker(2, None, 1.0))),
     {"a": 4.0}),
    (ClaimFilter(), Peers(("a",), frozenset({"a"}), {"a": 10},
                          (Taker(1, None, 1.0, held=40.0), Taker(2, frozenset({"a"}), 1.0))),
     {}),  # holds more than the other will: no share
    (ClaimFilter(), Peers(tuple(f"w{i:03}" for i in range(RUNNABLE_SCAN_MAX)),
                          frozenset({"w000"}), {f"w{i:03}": 1 for i in range(65)},
                          (Taker(1, None, 1.0), Taker(2, frozenset({"w000"}), 1.0))),
     {}),  # too many workflows to count them all
    (ClaimFilter(), Peers(("a", "b"), frozenset({"a"}), {"a": 1000, "b": 50},
                          tuple(Taker(j, frozenset({"a"}) if j > 1 else None, 1.0)
                                for j in range(1, MAX_TAKERS + 2))),
     {}),  # more live launchers than a division is worth
    (ClaimFilter(), Peers(("a",), frozenset(), {kind("a", None, "0" * 9): 10},
                          (Taker(1, None, 1.0), Taker(2, None, 1.0, tag_bit=0)),
                          tuple(((("k", str(i)),)) for i in range(MAX_TAG_FILTERS + 1))),
     {}),  # more distinct tag filters than a division is worth
])
def test_the_plan(filters: ClaimFilter, peers: Peers, want: dict[str, float]) -> None:
    assert plan(1, filters, peers) == pytest.approx(want)


def test_a_launcher_whose_share_is_claimed_claims_for_free_slots_only(
        tmp_path: Path) -> None:
    store = MemStore()
    store.add_app("a")
    for wf in ("wf_a", "wf_d"):
        store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": wf}
                         for _ in range(4)])
    only_a = launcher(tmp_path, store, "b", "wf_a")
    open_one = launcher(tmp_path, store, "a")
    turn([only_a, open_one], 0.3)
    pref = open_one.leader.claims.preference
    assert pref is not None and pref.spent  # its share, wf_d's 4 rows, is claimed
    assert claimed(store, open_one) == {"wf_d": 4}
    assert open_one.leader.dispatch.scarce  # no margins: it hoards none of wf_a's rows
    assert claimed(store, only_a) == {"wf_a": 4}


def owned_launcher(tmp_path: Path, store: MemStore, name: str, *owners: str) -> Kit:
    kit = make(tmp_path / name, store=store, node=SlotNode(), finish=False, owners=owners)
    kit.store.jobs[kit.lease.job_id].filters = ClaimFilter((), (), owners)
    return kit


def test_launchers_that_take_one_members_tasks_get_their_share(tmp_path: Path) -> None:
    """Each member runs a launcher for their own tasks (`--owner`), beside an open one.
    Divided by workflow alone, the open launcher took alice's rows in id order, and
    alice's launcher ran out and ended while bob's still had work."""
    store = MemStore()
    store.add_app("a")
    for who in ("alice", "bob"):
        store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "w",
                          "owner": who} for _ in range(24)])
    kits = [owned_launcher(tmp_path, store, "la", "alice"),
            owned_launcher(tmp_path, store, "lb", "bob"),
            owned_launcher(tmp_path, store, "lo")]
    run_out(kits, store)
    ran_each = [ran(store, k) for k in kits]
    assert sum(ran_each) == 48 and max(abs(n - 16) for n in ran_each) <= 2, ran_each
    owners = [Counter(t.owner for t in store.tasks.values() if t.batch_job_id == k.lease.job_id)
              for k in kits]
    assert set(owners[0]) == {"alice"} and set(owners[1]) == {"bob"}, owners


def test_a_plan_per_owner_claims_one_owners_rows_of_one_workflow(tmp_path: Path) -> None:
    peers = Peers(("w",), frozenset(), {kind("w", "alice"): 24, kind("w", "bob"): 24},
                  (Taker(1, None, 1.0, owners=frozenset({"alice"})),
                   Taker(2, None, 1.0, owners=frozenset({"bob"})), Taker(3, None, 1.0)))
    assert plan(1, ClaimFilter((), (), ("alice",)), peers) == pytest.approx(
        {kind("w", "alice"): 16.0})
    mine = plan(3, ClaimFilter(), peers)
    assert sum(mine.values()) == pytest.approx(16.0)
    store = MemStore()
    kit = make(tmp_path, store=store)
    pref = kit.leader.claims.preference
    assert pref is not None
    pref.left = dict(mine)
    first = pref.claim()
    assert first is not None
    wanted, rows = first
    workflow, owner, _sig = kind_parts(max(sorted(mine), key=lambda k: mine[k]))
    assert wanted == ClaimFilter(("w",), (), (owner,)) and rows == math.ceil(mine[kind(
        workflow, owner)])
    pref.claimed(wanted, rows, short=False)
    assert kind(workflow, owner) not in pref.left  # its share of that kind is claimed


def tagged_launcher(tmp_path: Path, store: MemStore, name: str,
                    *tags: tuple[str, str]) -> Kit:
    kit = make(tmp_path / name, store=store, node=SlotNode(), finish=False, tags=tags)
    kit.store.jobs[kit.lease.job_id].filters = ClaimFilter((), tags)
    return kit


def test_launchers_that_take_tagged_tasks_get_their_share(tmp_path: Path) -> None:
    """A launcher per site (`--tag site=a`, `--tag site=b`) beside an open one. Divided by
    workflow alone, the open launcher took site a's rows in id order, and site a's
    launcher ran out and ended while site b's still had work."""
    store = MemStore()
    store.add_app("a")
    for site in ("a", "b"):
        store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "w",
                          "tags": {"site": site}} for _ in range(24)])
    kits = [tagged_launcher(tmp_path, store, "la", ("site", "a")),
            tagged_launcher(tmp_path, store, "lb", ("site", "b")),
            tagged_launcher(tmp_path, store, "lo")]
    run_out(kits, store)
    ran_each = [ran(store, k) for k in kits]
    assert sum(ran_each) == 48 and max(abs(n - 16) for n in ran_each) <= 2, ran_each
    sites = [Counter(t.tags["site"] for t in store.tasks.values()
                     if t.batch_job_id == k.lease.job_id) for k in kits]
    assert set(sites[0]) == {"a"} and set(sites[1]) == {"b"}, sites


def test_a_plan_per_tag_signature_claims_exactly_one_signatures_rows(
        tmp_path: Path) -> None:
    site_a, site_b = (("site", "a"),), (("site", "b"),)
    peers = Peers(("w",), frozenset(), {kind("w", None, "10"): 24, kind("w", None, "01"): 24,
                                        kind("w", None, "00"): 12},
                  (Taker(1, None, 1.0), Taker(2, None, 1.0, tag_bit=0),
                   Taker(3, None, 1.0, tag_bit=1)), (site_a, site_b))
    assert plan(2, ClaimFilter((), site_a), peers) == pytest.approx(
        {kind("w", None, "10"): 20.0})
    mine = plan(1, ClaimFilter(), peers)
    assert mine == pytest.approx({kind("w", None, "00"): 12.0, kind("w", None, "10"): 4.0,
                                  kind("w", None, "01"): 4.0})
    kit = make(tmp_path, store=MemStore())
    pref = kit.leader.claims.preference
    assert pref is not None
    pref.left, pref.tag_filters = dict(mine), peers.tag_filters
    first = pref.claim()
    assert first == (ClaimFilter(("w",), (), (), (site_a, site_b)), 12)  # untagged rows
    pref.claimed(first[0], 12, short=False)
    second = pref.claim()
    assert second == (ClaimFilter(("w",), site_b, (), (site_a,)), 4)  # ties: key order
    pref.claimed(second[0], 4, short=False)
    assert pref.claim() == (ClaimFilter(("w",), site_a, (), (site_b,)), 4)
