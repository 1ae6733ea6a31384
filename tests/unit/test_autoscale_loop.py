"""The autoscale loop's pacing (cli/autoscale.py ``looks``): a look that keeps failing —
a submission the scheduler refuses every time (a wrong account, a closed partition) —
must not add a FAILED row and a script every interval for ever: the waits after failed
looks grow, and one good look brings the interval back."""

from __future__ import annotations

import threading

import pytest

from balsam_mpi.base.errors import BalsamError
from balsam_mpi.cli.autoscale import FAILED_LOOKS_CAP_S, looks


class _Stop(threading.Event):
    """Records each wait instead of sleeping, and stops the loop after ``n`` of them."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        if len(self.waits) >= self.n:
            self.set()
        return self.is_set()


def _looks(outcomes: list[bool], interval: float) -> tuple[list[float], list[str]]:
    said: list[str] = []
    stop = _Stop(len(outcomes))
    it = iter(outcomes)

    def look() -> None:
        if not next(it):
            raise BalsamError("sbatch: error: invalid account")

    looks(look, stop, interval, said.append)
    return stop.waits, said


def test_failed_looks_wait_longer_each_time_and_a_good_one_resets() -> None:
    waits, said = _looks([False, False, False, True, False, True], 60.0)
    assert waits == [60.0, 120.0, 240.0, 60.0, 60.0, 60.0]
    assert len(said) == 4  # one line per failed look
    assert "invalid account" in said[0] and "trying again in 60 s" in said[0]
    assert "trying again in 240 s" in said[2] and "3 looks in a row" in said[2]


def test_the_waits_after_failures_stop_growing_at_the_cap() -> None:
    waits, _ = _looks([False] * 12, 600.0)
    assert max(waits) == FAILED_LOOKS_CAP_S
    assert waits[-3:] == [FAILED_LOOKS_CAP_S] * 3


@pytest.mark.parametrize("interval", [1.0, 60.0])
def test_good_looks_wait_the_interval(interval: float) -> None:
    waits, said = _looks([True] * 4, interval)
    assert waits == [interval] * 4 and said == []
