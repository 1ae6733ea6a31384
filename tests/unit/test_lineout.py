"""Before an abort, a rank waits until what it wrote to its stdout and stderr has been
read by whoever reads them (the MPI process manager): `launcher/lineout.py`."""

from __future__ import annotations

import os
from pathlib import Path

from balsam_mpi.launcher.lineout import let_out


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_it_waits_until_the_reader_has_taken_the_line() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"balsam_mpi launcher: error: bad\n")
        clock = _Clock()
        naps: list[float] = []

        def nap(s: float) -> None:
            naps.append(s)
            clock.now += s
            if len(naps) == 3:  # the reader comes round on the third nap
                os.read(r, 4096)

        assert let_out((w,), cap_s=2.0, sleep=nap, clock=clock) is True
        assert len(naps) == 3
    finally:
        os.close(r)
        os.close(w)


def test_a_reader_that_never_reads_costs_the_cap_only() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"x\n")
        clock = _Clock()

        def nap(s: float) -> None:
            clock.now += s

        assert let_out((w,), cap_s=2.0, sleep=nap, clock=clock) is False
        assert 2.0 <= clock.now < 2.1
    finally:
        os.close(r)
        os.close(w)


def test_nothing_unread_or_a_file_waits_for_nothing(tmp_path: Path) -> None:
    r, w = os.pipe()
    with open(tmp_path / "out", "w") as f:
        try:
            naps: list[float] = []
            assert let_out((w, f.fileno(), 987), sleep=naps.append) is True
            assert naps == []
        finally:
            os.close(r)
            os.close(w)
