"""base/pacing.py: the one backoff (idle sleeps, retries with a give-up time) and jittered
periodic work, on a fake clock."""

from __future__ import annotations

import random

import pytest

from balsam_mpi.base.pacing import Backoff, Periodic
from tests.unit.fakeclock import Clock


def test_the_pause_doubles_to_its_cap_and_starts_over_after_a_reset() -> None:
    b = Backoff(0.001, 0.05)
    assert [b.next() for _ in range(8)] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032,
                                            0.05, 0.05]
    b.reset()
    assert b.next() == 0.001


def test_jitter_only_shortens_a_pause_and_never_passes_the_cap() -> None:
    rng = random.Random(7)
    b = Backoff(1.0, 8.0, jitter=0.25, rng=rng)
    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    pauses = [b.next() for _ in bases]
    for base, pause in zip(bases, pauses, strict=True):
        assert base * 0.75 <= pause <= base
    assert len(set(pauses[3:])) > 1  # jittered: not the same value every time


def test_a_failed_try_waits_its_pause_and_gives_up_after_the_give_up_time() -> None:
    clock = Clock()
    b = Backoff(0.5, 10.0, give_up_s=30.0, clock=clock)
    assert b.ready() and not b.failing
    assert b.failed() == 0.5
    assert not b.ready()
    clock.now += 0.5
    assert b.ready()
    for _ in range(5):
        b.failed()
    assert b.pause == 10.0  # capped
    clock.now += 29.0
    assert not b.exhausted()  # failing for 29.5 s
    clock.now += 1.0
    assert b.exhausted()
    b.reset()  # one try worked
    assert not b.failing and not b.exhausted() and b.ready()
    assert b.failed() == 0.5  # and the pauses start over


def test_without_a_give_up_time_a_backoff_never_gives_up() -> None:
    clock = Clock()
    b = Backoff(0.5, 10.0, clock=clock)
    b.failed()
    clock.now += 1e9
    assert not b.exhausted()


def test_idle_wakeups_stay_rare() -> None:
    """At its cap an idle rank wakes at most 1/cap times a second (the worker's default
    0.05 s: 20), a few probes each: well under 1% of a core."""
    for cap in (0.05, 0.01):
        b = Backoff(0.001, cap)
        total, wakeups = 0.0, 0
        while total < 10.0:
            total += b.next()
            wakeups += 1
        assert wakeups / total <= 1 / cap + 1


def test_the_sleeper_is_given_each_pause() -> None:
    slept: list[float] = []
    b = Backoff(0.002, 0.004)
    for _ in range(3):
        b.sleep(slept.append)
    assert slept == [0.002, 0.004, 0.004]


@pytest.mark.parametrize("jitter", [1.0, -0.1])
def test_a_jitter_of_a_whole_interval_or_less_than_none_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(1, 2, jitter=jitter)
    with pytest.raises(ValueError):
        Periodic(1, jitter=jitter)


def test_periodic_work_is_due_once_per_interval() -> None:
    clock = Clock()
    p = Periodic(10.0, jitter=0.0, clock=clock)
    assert not p.due()
    clock.now += 9.99
    assert not p.due()
    clock.now += 0.01
    assert p.due() and not p.due()  # once, then the next interval
    clock.now += 10.0
    assert p.due()
    p.soon()
    assert p.due()
    assert Periodic(10.0, now=True, clock=clock).due()


def test_jitter_shortens_each_interval_by_at_most_its_fraction() -> None:
    """A heartbeat every heartbeat_s (under half the lease) must never come later."""
    clock = Clock()
    p = Periodic(10.0, jitter=0.1, rng=random.Random(3), clock=clock)
    gaps: list[float] = []
    last = clock.now
    while len(gaps) < 50:
        clock.now += 0.01
        if p.due():
            gaps.append(clock.now - last)
            last = clock.now
    assert all(9.0 - 0.011 <= g <= 10.0 + 0.011 for g in gaps)
    assert max(gaps) - min(gaps) > 0.1  # not lockstep
