"""When an idle launcher counts itself idle beside other running jobs that hold work its
filters match (launcher/claims.py): once each has renewed its heartbeat since first seen,
and — only for one holding some of that work queued, unstarted — once it has had
HANDBACK_WAIT_S to hand it back. The clock is the test's."""

from __future__ import annotations

from pathlib import Path

import pytest

from balsam_mpi.launcher import claims as claims_mod
from balsam_mpi.launcher.orders import ClaimResult
from balsam_mpi.launcher.storeport import Held
from tests.unit.fakeclock import Clock
from tests.unit.leaderkit import make


def empty(*held: Held) -> ClaimResult:
    return ClaimResult(0, [], [], list(held), 1)


def holder(beat: float, *, queued: bool) -> Held:
    return Held(7, 1, beat, 0.1, 60.0, queued)


@pytest.mark.parametrize("queued", [False, True])
def test_a_live_holder_is_waited_for_only_while_it_could_hand_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queued: bool) -> None:
    clock = Clock(1000.0)
    monkeypatch.setattr(claims_mod.time, "monotonic", clock)
    claims = make(tmp_path).leader.claims
    claims._claimed(claims.covers, empty(holder(100.0, queued=queued)), 8, 1.0)
    assert claims.waiting_for == {7} and not claims.last_empty  # not yet seen alive
    clock.now += 0.3
    claims._claimed(claims.covers, empty(holder(100.5, queued=queued)), 8, 1.0)
    # It renewed: with nothing queued there, idle at once; with some, not before the wait.
    assert claims.last_empty is not queued
    clock.now += claims_mod.HANDBACK_WAIT_S
    claims._claimed(claims.covers, empty(holder(101.0, queued=queued)), 8, 1.0)
    assert claims.last_empty and not claims.waiting_for


def test_the_hand_back_wait_counts_from_each_time_work_ran_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder first seen long ago (an earlier lull) is still given its wait when this
    launcher runs out of work again."""
    clock = Clock(1000.0)
    monkeypatch.setattr(claims_mod.time, "monotonic", clock)
    claims = make(tmp_path).leader.claims
    claims._claimed(claims.covers, empty(holder(100.0, queued=True)), 8, 1.0)
    clock.now += 5.0
    claims._held(ClaimResult(3, [], [], [], 1))  # work came, and ran
    clock.now += 5.0
    claims._claimed(claims.covers, empty(holder(110.0, queued=True)), 8, 1.0)
    assert not claims.last_empty and claims.waiting_for == {7}


def test_the_holders_remembered_stay_bounded(tmp_path: Path) -> None:
    """A long-lived launcher sees batch jobs come and go: what it remembers of holders
    past FIRST_BEATS_KEPT is cut to the holders of the latest answer."""
    claims = make(tmp_path).leader.claims
    for job in range(claims_mod.FIRST_BEATS_KEPT + 10):
        claims._held(empty(Held(job, 1, 100.0, 0.1, 60.0, False)))
    assert len(claims.first_beat) <= claims_mod.FIRST_BEATS_KEPT
    assert claims_mod.FIRST_BEATS_KEPT + 9 in claims.first_beat  # the latest is kept
