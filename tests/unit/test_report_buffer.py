"""The leader's report buffer (no database): texts made storable on the way in, one bad
report isolated by halving instead of blocking every flush, connection failures held and
retried, and the journal numbering (report groups) that replays rely on."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from balsam_mpi.buffer import ReportBuffer
from balsam_mpi.cleantext import clean, one_line
from balsam_mpi.errors import ServerError
from balsam_mpi.limits import OUTPUT_TAIL_MAX
from balsam_mpi.protocol import EndKind, Finished, Started
from balsam_mpi.store import BadReport, Lease

pytestmark = pytest.mark.timeout(60)
LEASE = Lease(1, 1, False)


class FakeStore:
    """Refuses (as the server would, for its data) any batch holding a poisoned end."""

    def __init__(self, poison: set[int], down: int = 0) -> None:
        self.poison = poison
        self.down = down  # calls that fail for the connection first
        self.calls = 0
        self.written: list[Started | Finished] = []

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


def drain(buf: ReportBuffer, store: FakeStore, limit: int = 1000) -> None:
    """What the leader's loop does, without the pauses."""
    for _ in range(limit):
        if not buf:
            return
        batch = buf.take()
        try:
            buf.written(batch, buf.write(store, batch))  # type: ignore[arg-type]
        except (BadReport, ServerError) as exc:
            buf.failed(batch, exc)
            buf.retry_at = 0.0
    raise AssertionError("the buffer never emptied")


def reports(n: int) -> tuple[list[Started], list[Finished]]:
    return ([Started(i, 1, 1.0) for i in range(n)],
            [Finished(i, 1, int(EndKind.ERROR), 1, 1.0, 2.0, f"out {i}") for i in range(n)])


def test_texts_are_made_storable_on_the_way_in() -> None:
    buf = ReportBuffer(LEASE, 10, 1.0)
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
    buf = ReportBuffer(LEASE, 4096, 0.0)
    buf.add(started, finished)
    drain(buf, store)
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
    buf = ReportBuffer(LEASE, 4096, 0.0)
    buf.add(*reports(8))
    drain(buf, store)
    assert buf.given_up == 1
    assert sorted(f.id for f in store.written if isinstance(f, Finished)) == [
        0, 1, 2, 3, 4, 6, 7]


def test_connection_failures_hold_the_batch_and_pause() -> None:
    store = FakeStore(poison=set(), down=2)
    buf = ReportBuffer(LEASE, 4096, 0.0)
    buf.add(*reports(3))
    batch = buf.take()
    with pytest.raises(ServerError) as err:
        buf.write(store, batch)  # type: ignore[arg-type]
    buf.failed(batch, err.value)
    assert len(buf) == 6 and not buf.suspects  # held whole, not split
    assert buf.retry_pause > 0 and not buf.due()  # and waits before the next try
    drain(buf, store)
    assert len(store.written) == 6


def test_groups_number_what_each_batch_completes() -> None:
    class Journal:
        def __init__(self) -> None:
            self.groups: list[int] = []

        def add(self, group: int, started: list[Started], finished: list[Finished]) -> None:
            self.groups.append(group)

    journal = Journal()
    buf = ReportBuffer(LEASE, 4096, 0.0, journal)  # type: ignore[arg-type]
    buf.add([Started(1, 1, 1.0)], [])
    buf.add([], [])  # nothing: no group
    buf.add([], [Finished(1, 1, 0, 0, 1.0, 2.0)])
    assert journal.groups == [1, 2]
    batch = buf.take()
    assert batch.through == 2
    first, second = batch.halves()
    assert (first.through, second.through) == (0, 2)  # only the last piece completes it


def test_heartbeats_go_ahead_of_a_backlog_on_the_database_thread() -> None:
    """A backlog of claims and flushes (or a flush retried in an outage) must not hold
    a heartbeat back: it goes to the front of the queue."""
    import threading

    from balsam_mpi.buffer import DbThread

    class Store:
        broken = False

    gate = threading.Event()
    order: list[str] = []
    db = DbThread(Store())  # type: ignore[arg-type]
    try:
        first = db.submit(gate.wait, 30)  # the thread is busy with this one
        later = [db.submit(order.append, f"flush {i}") for i in range(3)]
        beat = db.submit(order.append, "heartbeat", urgent=True)
        gate.set()
        for f in [first, *later, beat]:
            f.result(timeout=30)
        assert order == ["heartbeat", "flush 0", "flush 1", "flush 2"]
    finally:
        gate.set()
        db.close()
