"""The leader's sweep (launcher/lease.py): it first has the database end sessions that fill
the server's shared structures (migration 0031), and a failure there neither stops the
sweep's own work nor goes unsaid."""

from __future__ import annotations

import logging

import pytest

from balsam_mpi.base.errors import DatabaseError
from balsam_mpi.launcher.lease import sweep_once
from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.storeport import Ended


def test_the_sweep_ends_hogs_before_it_writes() -> None:
    store = MemStore()
    sweep_once(store, None)
    assert store.calls == ["end_hogging_sessions", "expire_leases"]


def test_ended_sessions_are_logged_with_who_and_why(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    store = MemStore()
    monkeypatch.setattr(store, "end_hogging_sessions", lambda: [
        Ended(4242, "mallory", "locks", 9000), Ended(77, "eve", "notifications", 3),
        Ended(78, "eve", "idle transaction", 2), Ended(79, "eve", "long transaction", 2)])
    with caplog.at_level(logging.WARNING):
        sweep_once(store, None)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert "session 4242 of mallory" in lines[0] and "9000 entries" in lines[0]
    assert "session 77 of eve" in lines[1] and "notification queue" in lines[1]
    # Each rule says what the session did, not the queue's words for all of them.
    assert "idle in a transaction" in lines[2] and "notification" not in lines[2]
    assert "over an hour" in lines[3] and "notification" not in lines[3]


def test_a_failing_look_for_hogs_is_said_and_the_sweep_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemStore()
    store.fail("end_hogging_sessions", DatabaseError("out of shared memory"))
    with caplog.at_level(logging.WARNING):
        sweep_once(store, None)
    assert store.calls == ["end_hogging_sessions", "expire_leases"]
    assert any("out of shared memory" in r.getMessage() for r in caplog.records)


def test_a_full_lock_table_reads_as_such_and_is_retried() -> None:
    """"out of shared memory" read as a lost connection; it is the lock table, and a
    ServerError, so a launcher's flush holds its reports and retries."""
    import psycopg

    from balsam_mpi.base import db
    from balsam_mpi.base.errors import ServerError

    mine = db.translate(psycopg.errors.OutOfMemory("out of shared memory"))
    assert isinstance(mine, ServerError)
    assert "lock table" in str(mine) and "lost the database connection" not in str(mine)
