"""The leader's report buffer (no database): texts made storable on the way in, one bad
report isolated by halving instead of blocking every flush, connection failures held and
retried, and the journal numbering (report groups) that replays rely on."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from balsam_mpi.base.cleantext import clean, one_line
from balsam_mpi.base.errors import ServerError
from balsam_mpi.base.limits import OUTPUT_TAIL_MAX
from balsam_mpi.base.pacing import Backoff
from balsam_mpi.launcher.calls import Calls
from balsam_mpi.launcher.dbthread import Inline
from balsam_mpi.launcher.flushrows import mark_before
from balsam_mpi.launcher.reports import ReportBuffer
from balsam_mpi.launcher.storeport import BadReport, Lease, Written
from balsam_mpi.protocol import EndKind, Finished, Started
from tests.unit.fakeclock import Clock

pytestmark = pytest.mark.timeout(60)
LEASE = Lease(1, 1, False)


class FakeStore:
    """Refuses (as the server would, for its data) any batch holding a poisoned end, and
    records what it wrote in order."""

    broken = False

    def __init__(self, poison: set[int], down: int = 0) -> None:
        self.poison = poison
        self.down = down  # calls that fail for the connection first
        self.calls = 0
        self.written: list[Started | Finished] = []
        self.locked: set[int] = set()  # rows another session holds
        self.marks: list[int] = []  # the journal's mark after each write

    def report_unlocked(self, lease: Lease, started: Sequence[Started],
                        finished: Sequence[Finished], through: int = 0,
                        groups: Sequence[int] = ()) -> Written:
        held = frozenset(x.id for x in [*started, *finished] if x.id in self.locked)
        mark = mark_before(held, started, finished, through, groups) if held else through
        counts = self.report(lease, [s for s in started if s.id not in held],
                             [f for f in finished if f.id not in held], mark)
        self.marks.append(mark)
        return Written(counts, held)

    def report(self, lease: Lease, started: Sequence[Started],
               finished: Sequence[Finished], through: int = 0) -> dict[str, int]:
        self.calls += 1
        if self.down:
            self.down -= 1
            raise ServerError("lost the database connection: server closed")
        bad = [f.id for f in finished if f.id in self.poison and f.kind != EndKind.REFUSED]
        if bad:
            raise BadReport(f"cannot store task {bad[0]}")
        self.written.extend([*started, *finished])
        return {"started": len(started), "ended": len(finished)}


def buffer(store: FakeStore, journal: object = None
           ) -> tuple[ReportBuffer, Calls, Clock]:
    """A buffer whose flushes run at once (Inline) and whose pauses follow a fake clock."""
    clock = Clock(0.0)
    calls = Calls(Inline(store))  # type: ignore[arg-type]
    buf = ReportBuffer(LEASE, store, calls, size=4096, interval_s=0.0,  # type: ignore[arg-type]
                       journal=journal, retry=Backoff(0.5, 10.0, clock=clock))  # type: ignore[arg-type]
    return buf, calls, clock


def drain(buf: ReportBuffer, calls: Calls, clock: Clock, limit: int = 1000) -> None:
    """What the leader's loop does, each turn past any pause."""
    for _ in range(limit):
        if not buf.pending:
            return
        clock.now += 10.0
        buf.flush()
        calls.collect()
    raise AssertionError("the buffer never emptied")


def reports(n: int) -> tuple[list[Started], list[Finished]]:
    return ([Started(i, 1, 1.0) for i in range(n)],
            [Finished(i, 1, int(EndKind.ERROR), 1, 1.0, 2.0, f"out {i}") for i in range(n)])


def test_texts_are_made_storable_on_the_way_in() -> None:
    buf, _calls, _clock = buffer(FakeStore(set()))
    nul = "abc\x00def"
    surrogate = "bad \udcff byte"
    huge = "x" * (OUTPUT_TAIL_MAX * 3) + "END"
    buf.add([], [Finished(1, 1, 1, 1, 0, 0, nul), Finished(2, 1, 1, 1, 0, 0, surrogate),
                 Finished(3, 1, 1, 1, 0, 0, huge), Finished(4, 1, 1, 1, 0, 0, "plain")])
    tails = [f.tail for f in buf.held.finished]
    assert tails[0] == "abc\ufffddef"
    assert tails[1].encode("utf-8") and "\udcff" not in tails[1]
    assert len(tails[2]) == OUTPUT_TAIL_MAX and tails[2].endswith("END")  # the tail
    assert tails[3] == "plain"
    assert one_line("first\nsecond") == "first" and clean(None) == ""


def test_one_bad_report_is_isolated_and_written_as_a_failure() -> None:
    started, finished = reports(64)
    store = FakeStore(poison={37})
    buf, calls, clock = buffer(store)
    buf.add(started, finished)
    drain(buf, calls, clock)
    ends = {f.id: f for f in store.written if isinstance(f, Finished)}
    assert sorted(ends) == list(range(64))  # every task's end is written, one way or another
    assert ends[37].kind == EndKind.REFUSED
    assert "could not store its report" in ends[37].tail and "task 37" in ends[37].tail
    assert all(ends[i].kind == EndKind.ERROR for i in range(64) if i != 37)
    assert sum(isinstance(x, Started) for x in store.written) == 64
    # Halving: a handful of calls per bad report, not one per report.
    assert store.calls <= 2 * 7 + 3
    # Order kept: every start is written before any end of the same task.
    first_end = {x.id: n for n, x in reversed(list(enumerate(store.written)))
                 if isinstance(x, Finished)}
    assert all(n < first_end[x.id] for n, x in enumerate(store.written)
               if isinstance(x, Started))


def test_a_report_that_cannot_be_stored_at_all_is_given_up_not_retried_forever() -> None:
    class Hopeless(FakeStore):
        def report(self, lease: Lease, started: Sequence[Started],
                   finished: Sequence[Finished], through: int = 0) -> dict[str, int]:
            if any(f.id == 5 for f in finished):
                self.calls += 1
                raise BadReport("no")
            return super().report(lease, started, finished, through)

    store = Hopeless(poison=set())
    buf, calls, clock = buffer(store)
    buf.add(*reports(8))
    drain(buf, calls, clock)
    assert buf.given_up == 1
    assert sorted(f.id for f in store.written if isinstance(f, Finished)) == [
        0, 1, 2, 3, 4, 6, 7]


def test_connection_failures_hold_the_batch_and_pause() -> None:
    store = FakeStore(poison=set(), down=2)
    buf, calls, clock = buffer(store)
    buf.add(*reports(3))
    assert buf.flush() and calls.collect()  # failed for the connection
    assert len(buf) == 6 and not buf.suspects  # held whole, not split
    assert buf.retry.pause == 0.5 and not buf.due()  # and waits before the next try
    assert not buf.flush() and store.calls == 1
    clock.now += 0.5
    assert buf.flush() and calls.collect()  # the second failure waits longer
    assert buf.retry.pause == 1.0 and len(buf) == 6
    drain(buf, calls, clock)
    assert len(store.written) == 6 and store.calls == 3
    assert not buf.retry.failing  # a write that worked ends the pauses


def test_a_later_report_waits_behind_a_batch_that_failed_for_the_connection() -> None:
    """Starts precede ends: a failed batch goes back in front of what came since."""
    store = FakeStore(poison=set(), down=1)
    buf, calls, clock = buffer(store)
    buf.add([Started(1, 1, 1.0)], [])
    assert buf.flush() and calls.collect()
    buf.add([], [Finished(1, 1, int(EndKind.DONE), 0, 1.0, 2.0)])
    drain(buf, calls, clock)
    assert [type(x).__name__ for x in store.written] == ["Started", "Finished"]


def test_groups_number_what_each_batch_completes() -> None:
    class Journal:
        def __init__(self) -> None:
            self.groups: list[int] = []

        def add(self, group: int, started: list[Started], finished: list[Finished]) -> None:
            self.groups.append(group)

    journal = Journal()
    buf, _calls, _clock = buffer(FakeStore(set()), journal)
    buf.add([Started(1, 1, 1.0)], [])
    buf.add([], [])  # nothing: no group
    buf.add([], [Finished(1, 1, 0, 0, 1.0, 2.0)])
    assert journal.groups == [1, 2]
    batch = buf.take()
    assert batch.through == 2
    first, second = batch.halves()
    assert (first.through, second.through) == (0, 2)  # only the last piece completes it


def test_reports_of_rows_another_session_holds_wait_in_order_within_the_journals_reach(
        ) -> None:
    store = FakeStore(poison=set())
    clock = Clock(0.0)
    calls = Calls(Inline(store))  # type: ignore[arg-type]
    buf = ReportBuffer(LEASE, store, calls, size=4096,  # type: ignore[arg-type]
                       interval_s=0.0, retry=Backoff(0.5, 10.0, clock=clock),
                       held_back=Backoff(0.2, 2.0, clock=clock))
    store.locked = {2}
    buf.add([Started(1, 1, 1.0)], [])  # group 1
    buf.add([Started(2, 1, 1.0)], [])  # group 2: its row is held
    buf.add([], [Finished(1, 1, 0, 0, 1.0, 2.0)])  # group 3
    assert buf.flush() and calls.collect()
    assert [x.id for x in store.written] == [1, 1]
    assert store.marks == [1]  # a replay would still write task 2's start
    assert (len(buf), buf.deferred) == (1, 1)
    buf.add([], [Finished(2, 1, 0, 0, 1.0, 2.0)])  # group 4: after its start, always
    assert not buf.flush()  # a pause first, not a flush a turn
    clock.now += 0.5
    assert buf.flush() and calls.collect()  # still held: both wait, in order
    assert store.marks == [1, 1] and len(buf) == 2
    store.locked = set()
    clock.now += 5.0
    assert buf.flush() and calls.collect()
    assert [type(x).__name__ for x in store.written[2:]] == ["Started", "Finished"]
    assert store.marks[-1] == 4 and not buf.pending
