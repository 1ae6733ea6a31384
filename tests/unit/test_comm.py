"""The idle backoff (the MPI side of comm.py is exercised by the tests/mpi tier)."""

from __future__ import annotations

from balsam_mpi.comm import Backoff


def test_backoff_grows_to_its_cap_and_resets() -> None:
    b = Backoff(first=0.001, cap=0.05)
    waits = [b.next() for _ in range(10)]
    assert waits[0] == 0.001
    assert all(x <= y for x, y in zip(waits, waits[1:], strict=False))
    assert max(waits) == 0.05
    b.reset()
    assert b.next() == 0.001


def test_backoff_sleeps_through_the_given_sleeper() -> None:
    slept: list[float] = []
    b = Backoff(first=0.002, cap=0.004)
    for _ in range(3):
        b.sleep(slept.append)
    assert slept == [0.002, 0.004, 0.004]


def test_idle_wakeups_stay_rare() -> None:
    """At the cap an idle rank wakes at most 1/cap times a second (20 with the default),
    a few probes each: well under 1% of a core."""
    b = Backoff()
    total = 0.0
    wakeups = 0
    while total < 10.0:
        total += b.next()
        wakeups += 1
    assert wakeups / total <= 1 / b.cap + 1


def test_an_unknown_tag_is_a_protocol_error_naming_rank_and_tag() -> None:
    """15.10: an unknown MPI tag raised ValueError from the Tag enum, naming neither."""
    import pytest

    from balsam_mpi.comm import decode
    from balsam_mpi.errors import BalsamError
    from balsam_mpi.protocol import Hello, ProtocolError, Report, Tag

    with pytest.raises(ProtocolError, match=r"rank 3 .* tag 99") as err:
        decode(3, 99, object())
    assert isinstance(err.value, BalsamError)
    with pytest.raises(ProtocolError, match="rank 2 sent tag 12"):
        decode(2, int(Tag.REPORT), Hello(2, "h", 1, 1, 0))
    report = Report(rank=1, acked=0, free=1.0, running=0, queued=0)
    assert decode(1, int(Tag.REPORT), report) is report
