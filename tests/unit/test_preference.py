"""Claim preference between launchers (launcher/preference.py): a launcher claims first
the workflows no other live launcher's filter names, so a launcher limited to a workflow
keeps that work; and what to prefer, decided from the peers' filters."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.preference import MAX_PREFERRED, RUNNABLE_SCAN_MAX, preferred
from balsam_mpi.launcher.storeport import ClaimFilter, Peers
from tests.unit.leaderkit import Kit, make
from tests.unit.slotkit import SlotNode

pytestmark = pytest.mark.timeout(60)


def launcher(tmp_path: Path, store: MemStore, name: str, *workflows: str) -> Kit:
    kit = make(tmp_path / name, store=store, node=SlotNode(), finish=False,
               workflows=workflows)
    kit.store.jobs[kit.lease.job_id].filters = ClaimFilter(workflows)  # as open_job does
    return kit


def turn(kits: list[Kit], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for k in kits:
            if k.leader.ended is None:
                k.leader.turn()
        time.sleep(0.001)


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
    turn([only_a], 0.1)
    assert claimed(store, only_a) == {"wf_a": 6}  # 4 slots and its margin
    open_one = launcher(tmp_path, store, "a")
    turn([only_a, open_one], 0.3)
    assert claimed(store, open_one) == {"wf_d": 6}  # wf_a is left to the other
    for k in (only_a, open_one):
        k.node.end_all()  # type: ignore[attr-defined]
    turn([only_a, open_one], 0.3)
    assert claimed(store, only_a)["wf_a"] == 12 and "wf_a" not in claimed(store, open_one)


def test_once_its_own_work_is_gone_the_open_launcher_takes_the_rest(
        tmp_path: Path) -> None:
    store = MemStore()
    store.add_app("a")
    store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "wf_a"}
                     for _ in range(20)])
    store.add_tasks([{"app": "a", "node_packing_count": 4, "workflow": "wf_d"}
                     for _ in range(2)])
    only_a = launcher(tmp_path, store, "b", "wf_a")
    turn([only_a], 0.1)
    open_one = launcher(tmp_path, store, "a")
    turn([only_a, open_one], 0.3)
    # The 2 of wf_d first, then (the preferred claim short) the usual claim: wf_a.
    assert claimed(store, open_one) == {"wf_d": 2, "wf_a": 4}


@pytest.mark.parametrize("filters, peers, want", [
    (ClaimFilter(), Peers(("a", "d"), frozenset()), ()),  # nobody else filters
    (ClaimFilter(), Peers(("a", "b", "d"), frozenset({"a", "b"})), ("d",)),
    (ClaimFilter(), Peers(("a",), frozenset({"a"})), ()),  # all of it named by others
    (ClaimFilter(("a", "c")), Peers(("a", "c"), frozenset({"a"})), ("c",)),
    (ClaimFilter(("a", "c")), Peers(("a",), frozenset({"a"})), ()),  # c has no rows
    (ClaimFilter(("a", "c")), Peers(("c",), frozenset({"b"})), ()),  # nothing to steer
    (ClaimFilter(), Peers(tuple(f"w{i:03}" for i in range(RUNNABLE_SCAN_MAX)),
                          frozenset({"w000"})), ()),  # too many workflows to tell
    (ClaimFilter(), Peers(tuple(f"w{i}" for i in range(MAX_PREFERRED + 2)),
                          frozenset({"w0"})), ()),  # more than MAX_PREFERRED to ask for
])
def test_what_is_preferred(filters: ClaimFilter, peers: Peers,
                           want: tuple[str, ...]) -> None:
    assert preferred(filters, peers) == want
