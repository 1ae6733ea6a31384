"""Worker liveness (no MPI): silent ranks are declared dead after the timeout, a cut-off
drain is bounded, a rank that never joined is not waited for forever, and a stall of the
leader's own loop is not held against the workers."""

from __future__ import annotations

import pytest

from balsam_mpi.base.errors import UsageError
from balsam_mpi.launcher.config import resolve
from balsam_mpi.launcher.liveness import WorkerWatch

pytestmark = pytest.mark.timeout(60)


def test_a_silent_rank_is_declared_dead_once() -> None:
    w = WorkerWatch(expected=2, timeout_s=5.0)
    t = w.began
    w.heard_from(1, t)
    w.heard_from(2, t)
    for step in range(1, 8):  # rank 1 keeps reporting every second, rank 2 froze
        now = t + step
        w.heard_from(1, now)
        found = w.check(set(), now)
        if step < 6:
            assert found == []
    dead = w.dead
    assert dead == {2}
    assert w.check(set(), t + 8) == []  # not twice


def test_a_cut_off_drain_is_bounded_even_for_a_rank_that_still_reports() -> None:
    w = WorkerWatch(expected=2, timeout_s=5.0)
    t = w.began
    w.drain_started(2.0, t)
    for step in range(1, 9):
        w.heard_from(1, t + step)
        w.heard_from(2, t + step)
        found = w.check({1}, t + step)  # rank 1 said BYE; rank 2 never does
        if step <= 7:
            assert found == []
    assert w.dead == {2}


def test_a_rank_that_never_joins_is_not_waited_for_forever() -> None:
    w = WorkerWatch(expected=1, timeout_s=1.0, startup_s=30.0)
    t = w.began
    found = []
    for tenth in range(1, 320):  # the leader's loop checks often
        found += w.check(set(), t + tenth / 10)
        if tenth < 300:
            assert found == []
    [(rank, why)] = found
    assert rank == 1 and "never joined" in why


def test_the_leaders_own_stall_does_not_kill_its_workers() -> None:
    w = WorkerWatch(expected=1, timeout_s=5.0)
    t = w.began
    w.heard_from(1, t)
    assert w.check(set(), t + 1) == []
    # The leader's loop was away 60 s (its messages waited unread): not the worker's fault.
    assert w.check(set(), t + 61) == []
    found = []
    for step in range(62, 70):  # ... but a real silence afterwards counts
        found += w.check(set(), t + step)
        if step <= 65:
            assert found == []
    assert [rank for rank, _why in found] == [1]


def test_the_timeout_must_span_several_report_intervals() -> None:
    assert resolve({}, {}, {}).worker_timeout_s == 10.0
    with pytest.raises(UsageError, match="worker_timeout_s"):
        resolve({}, {"BALSAM_WORKER_TIMEOUT_S": "2"}, {})
