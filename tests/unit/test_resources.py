"""Packing onto one node, GPU ids, and the leader's view of a worker's free share."""

from __future__ import annotations

import pytest

from balsam_mpi.launcher.workerview import WorkerView, room
from balsam_mpi.node.resources import NodeResources, need_of


def test_thirds_fill_a_node_exactly() -> None:
    node = NodeResources()
    for i in range(3):
        assert node.fits(need_of(3))
        node.take(i, need_of(3))
    assert not node.fits(need_of(3)) and not node.fits(0.01)
    node.release(1)
    assert node.fits(need_of(3)) and not node.fits(need_of(2))
    node.release(0)
    node.release(2)
    assert node.used == 0.0  # recomputed when empty: no rounding left behind


def test_a_whole_node_task_waits_for_an_empty_node() -> None:
    node = NodeResources()
    node.take(1, need_of(16))
    assert not node.fits(need_of(1))
    node.release(1)
    assert node.fits(need_of(1))


def test_gpus_are_never_shared() -> None:
    node = NodeResources(gpus=4)
    a = node.take(1, 0.25, gpus=1)
    b = node.take(2, 0.25, gpus=2)
    assert set(a).isdisjoint(b) and len(a) == 1 and len(b) == 2
    assert not node.fits(0.25, gpus=2)
    node.release(2)
    assert node.take(3, 0.25, gpus=3) == ("1", "2", "3")


def test_taking_too_much_or_twice_is_an_error() -> None:
    node = NodeResources()
    node.take(1, 0.75)
    with pytest.raises(ValueError):
        node.take(2, 0.5)
    with pytest.raises(ValueError):
        node.take(1, 0.1)


def test_worker_view_subtracts_assignments_not_yet_acknowledged() -> None:
    view = WorkerView(rank=1)
    view.update(reported_free=1.0, acked=0, running=0, queued=0)
    view.sent(1, 0.5)
    view.sent(2, 0.25)
    assert view.free() == pytest.approx(0.25)
    assert room(view, margin=0.5) == pytest.approx(0.75)
    # The worker wrote its report after applying ASSIGN 1 only.
    view.update(reported_free=0.5, acked=1, running=1, queued=0)
    assert view.free() == pytest.approx(0.25)  # ASSIGN 2 is still on its way
    assert not view.idle()
    view.update(reported_free=1.0, acked=2, running=0, queued=0)
    assert view.idle() and view.free() == 1.0


def test_no_room_on_draining_or_dead_workers() -> None:
    view = WorkerView(rank=1)
    view.draining = True
    assert room(view, 0.5) == 0.0


def test_pace_sets_the_queue_depth_from_what_a_node_finishes() -> None:
    from balsam_mpi.launcher.workerview import Pace

    pace = Pace()
    assert pace.margin(0.0, initial=0.5) == 0.5  # nothing known yet
    for k in range(1, 6):  # one node's worth finished every second (1 s tasks × 16)
        pace.record(float(k), float(k))
    assert pace.rate(5.0) == pytest.approx(1.0)
    assert pace.margin(5.0, initial=0.5, horizon_s=2.0, cap=1.0) == 1.0
    # Then nothing finishes for a minute (long tasks now): the margin decays to the floor.
    # 4 shares over the 60 s since the last one, times the 2 s horizon:
    assert pace.margin(65.0, initial=0.5, horizon_s=2.0, floor=0.05) == pytest.approx(4 / 30)
    assert pace.margin(600.0, initial=0.5, horizon_s=2.0, floor=0.05) == 0.05
