"""Claims on a connection of their own (``claim_connection``): the "claim" calls go to
their own runner, everything else to the leader's one, and both wake the leader through
one fd. A claim may now run while a flush of ends is on its way, so the leader counts a
flush as seen by a claim only once it is written (``ReportBuffer.settled_flushes``): else
an empty claim that ran beside the flush that made a child READY would let the launcher
end as idle with that child waiting."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from typing import Any

import pytest

from balsam_mpi.base.errors import ServerError
from balsam_mpi.launcher import session
from balsam_mpi.launcher.calls import Calls, leader_calls
from balsam_mpi.launcher.config import Settings
from balsam_mpi.launcher.dbthread import DbThread
from balsam_mpi.launcher.reports import ReportBuffer
from balsam_mpi.launcher.storeport import Lease, Written
from balsam_mpi.protocol import EndKind, Finished, Started

pytestmark = pytest.mark.timeout(30)
LEASE = Lease(1, 1, False)


class Held:
    """A runner whose calls finish when the test says (as a slow connection's would)."""

    def __init__(self, wake_fd: int = -1) -> None:
        self.wake_fd = wake_fd
        self.sent: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], *args: Any, urgent: bool = False,
               **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.sent.append((future, fn, args))
        return future

    def finish(self) -> None:
        for future, fn, args in self.sent:
            if not future.done():
                future.set_result(fn(*args))


class Store:
    broken = False

    def report(self, lease: Lease, started: list[Started], finished: list[Finished],
               through: int = 0) -> dict[str, int]:
        return {"started": len(started), "ended": len(finished)}

    def report_unlocked(self, lease: Lease, started: list[Started],
                        finished: list[Finished], through: int = 0,
                        groups: Sequence[int] = ()) -> Written:
        return Written(self.report(lease, started, finished, through))


def test_the_leaders_heartbeat_goes_with_the_claims_never_behind_a_flush() -> None:
    main, side = Held(), Held()
    calls = leader_calls(main, side)  # type: ignore[arg-type]
    assert calls.start("flush", lambda: "written")
    assert calls.start("heartbeat", lambda: True, urgent=True)
    assert calls.start("kills", lambda: [])
    assert [fn() for _f, fn, _a in side.sent] == [True]
    assert [fn() for _f, fn, _a in main.sent] == ["written", []]
    alone = leader_calls(main, None)  # type: ignore[arg-type]
    assert alone.routes == {}


def test_claims_go_to_their_own_runner_and_the_rest_to_the_leaders() -> None:
    main, claims = Held(), Held()
    calls = Calls(main, routes={"claim": claims})  # type: ignore[arg-type]
    assert calls.start("claim", lambda: "rows")
    assert calls.start("flush", lambda: "written")
    assert calls.start("heartbeat", lambda: True, urgent=True)
    assert [fn() for _f, fn, _a in claims.sent] == ["rows"]
    assert [fn() for _f, fn, _a in main.sent] == ["written", True]
    assert not calls.start("claim", lambda: "again")  # one claim in flight, as before
    got: list[str] = []
    claims.finish()
    calls.start("claim", lambda: "x")  # still in flight until collected
    assert calls.collect() and calls.start("claim", lambda: "next", then=got.append)
    claims.finish()
    calls.collect()
    assert got == ["next"]


def test_runners_that_would_wake_different_fds_are_refused() -> None:
    with pytest.raises(ValueError, match="same fd"):
        Calls(Held(3), routes={"claim": Held(4)})  # type: ignore[arg-type]


def test_a_flush_of_ends_counts_as_seen_by_claims_only_once_written() -> None:
    main = Held()
    calls = Calls(main)  # type: ignore[arg-type]
    buf = ReportBuffer(LEASE, Store(), calls, size=1, interval_s=0.0)  # type: ignore[arg-type]
    buf.add([Started(1, 1, 1.0)], [])
    assert buf.flush() and (buf.flushes, buf.settled_flushes) == (0, 0)  # starts only
    main.finish()
    calls.collect()
    buf.add([], [Finished(1, 1, EndKind.DONE, 0, 1.0, 2.0)])
    assert buf.flush()
    assert (buf.flushes, buf.settled_flushes) == (1, 0)  # on its way: not seen yet
    main.finish()
    calls.collect()
    assert (buf.flushes, buf.settled_flushes) == (1, 1)


def test_a_thread_that_shares_a_wake_fd_leaves_it_open() -> None:
    store = Store()
    with DbThread(store) as main:  # type: ignore[arg-type]
        side = DbThread(store, wake_fd=main.wake_fd, name="balsam-db-claims")  # type: ignore[arg-type]
        assert side.submit(lambda: 7).result(5) == 7
        side.close()
        os.fstat(main.wake_fd)  # still the main thread's, open
        assert os.eventfd_read(main.wake_fd) >= 1  # the side's call woke it
        fd = main.wake_fd
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with its owner


def test_claims_share_the_leaders_connection_when_a_second_is_refused(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(project: object, name: str = "") -> None:
        raise ServerError('too many connections for role "alice"')

    monkeypatch.setattr(session.Store, "connect", refuse)
    with ExitStack() as stack, caplog.at_level(logging.WARNING):
        got = session.LeaderSession._claim_store(Settings(), object(), stack)  # type: ignore[arg-type]
    assert got is None
    assert "too many connections" in caplog.text and "share" in caplog.text
    with ExitStack() as stack:
        assert session.LeaderSession._claim_store(
            Settings(claim_connection=False), object(), stack) is None  # type: ignore[arg-type]
