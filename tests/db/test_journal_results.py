"""A Python task's return value written from its leader's journal (migration 0017).

A leader that loses the database keeps its nodes' reports in the journal, results
included (``Finished.result``); whoever sweeps next writes them. Before 0017 the replay
wrote the end but not the value, so a task could be JOB_FINISHED with no result when the
function had returned one. The value is held to the rules of a live flush: fenced by the
job and epoch, only for a success, never over a result already written, the same cap and
the same refusal of text that is not JSON, neither of which holds back the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.launcher.journal import Journal
from balsam_mpi.launcher.lease import sweep_once
from balsam_mpi.launcher.replay import replay_due
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import Lease
from balsam_mpi.protocol import EndKind, Finished, Started
from tests.db.test_journal import T0, journal_of
from tests.db.test_lease import add_tasks, claim, go_silent, open_lease

pytestmark = pytest.mark.timeout(120)

DONE = int(EndKind.DONE)


def results(conn: Any) -> dict[int, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, result::text, state_message FROM tasks ORDER BY id")}


def three_started(store: Store, conn: Any) -> tuple[list[int], Lease, list[Started]]:
    """Three tasks claimed by a job whose starts reached the database, its ends not."""
    ids = add_tasks(conn, 3)
    dead = open_lease(store)
    claim(store, dead, 3)
    starts = [Started(i, dead.epoch, T0) for i in ids]
    store.report(dead, starts, [])
    return ids, dead, starts


def one_requeued(store: Store, conn: Any, directory: Path) -> tuple[int, Lease, Journal]:
    """A task started by a job whose lease ran out and was swept (the task requeued)
    before anything was replayed; the job's journal, open."""
    [a] = add_tasks(conn, 1)
    dead = open_lease(store)
    journal = Journal(directory, dead.job_id, dead.epoch, store.journal_key(dead))
    claim(store, dead, 1)
    store.report(dead, [Started(a, dead.epoch, T0)], [])
    go_silent(conn, dead)
    store.expire_leases()
    return a, dead, journal


def test_a_result_in_the_journal_is_written_with_its_end(
        store: Store, conn: Any, tmp_path: Path) -> None:
    (a, b, c), dead, starts = three_started(store, conn)
    journal_of(store, dead, tmp_path, starts, [
        Finished(a, dead.epoch, DONE, 0, T0, T0 + 1, "", '{"f": 1.5, "s": "\\u00e9"}'),
        Finished(b, dead.epoch, DONE, 0, T0, T0 + 1),  # returned None: no result
        Finished(c, dead.epoch, int(EndKind.ERROR), 1, T0, T0 + 1, "boom", "7")])
    go_silent(conn, dead)
    replayed, _expired = sweep_once(store, tmp_path)
    assert [r.finished for r in replayed] == [2]
    got = results(conn)
    assert got[a][:2] == ("JOB_FINISHED", '{"f": 1.5, "s": "\\u00e9"}')  # byte for byte
    assert got[b][:2] == ("JOB_FINISHED", None)
    assert got[c][:2] == ("FAILED", None)  # a failure has no value, whatever a line says


def test_a_result_after_the_requeue_is_written_too(
        store: Store, conn: Any, tmp_path: Path) -> None:
    """The lease ran out before the journal was read: the task was requeued, then the
    journal's success finishes it — with its value."""
    a, dead, journal = one_requeued(store, conn, tmp_path)
    journal.add(1, [], [Finished(a, dead.epoch, DONE, 0, T0, T0 + 1, "", "[1, 2]")])
    journal.close(complete=True)
    [replayed] = replay_due(store, tmp_path)
    assert replayed.finished == 1
    assert results(conn)[a][:2] == ("JOB_FINISHED", "[1, 2]")


def test_a_bad_or_oversized_result_is_refused_alone(
        store: Store, conn: Any, tmp_path: Path) -> None:
    (a, b, c), dead, starts = three_started(store, conn)
    big = '"' + "x" * 262_144 + '"'
    journal_of(store, dead, tmp_path, starts, [
        Finished(a, dead.epoch, DONE, 0, T0, T0 + 1, "", "{not json"),
        Finished(b, dead.epoch, DONE, 0, T0, T0 + 1, "", big),
        Finished(c, dead.epoch, DONE, 0, T0, T0 + 1, "", '"ok"')])
    go_silent(conn, dead)
    sweep_once(store, tmp_path)
    got = results(conn)
    assert got[a] == ("JOB_FINISHED", None, "the result was not stored: not valid JSON")
    assert got[b][:2] == ("JOB_FINISHED", None)
    assert "over the cap of 262144" in got[b][2]
    assert got[c][:2] == ("JOB_FINISHED", '"ok"')


def test_a_result_the_live_leader_wrote_is_kept(
        store: Store, conn: Any, tmp_path: Path) -> None:
    """The flush reached the database, the journal's line of it was replayed anyway
    (the database had not yet recorded how far the flush went): the value stays."""
    [a] = add_tasks(conn, 1)
    dead = open_lease(store)
    journal = Journal(tmp_path, dead.job_id, dead.epoch, store.journal_key(dead))
    claim(store, dead, 1)
    end = [Finished(a, dead.epoch, DONE, 0, T0, T0 + 1, "", '"live"')]
    store.report(dead, [Started(a, dead.epoch, T0)], end)  # through=0: not acknowledged
    journal.add(1, [Started(a, dead.epoch, T0)],
                [Finished(a, dead.epoch, DONE, 0, T0, T0 + 1, "", '"forged later"')])
    journal.close(complete=True)
    go_silent(conn, dead)
    replay_due(store, tmp_path)
    assert results(conn)[a][:2] == ("JOB_FINISHED", '"live"')


def test_a_result_of_another_claim_is_not_written(
        store: Store, conn: Any, tmp_path: Path) -> None:
    """The task was requeued and claimed by another job, which finished it without a
    value: the dead job's line must not attach one."""
    a, dead, journal = one_requeued(store, conn, tmp_path)
    other = open_lease(store)
    assert claim(store, other, 1) == [a]
    store.report(other, [Started(a, other.epoch, T0 + 2)],
                 [Finished(a, other.epoch, DONE, 0, T0 + 2, T0 + 3)])
    journal.add(1, [], [Finished(a, dead.epoch, DONE, 0, T0, T0 + 1, "", '"stale"')])
    journal.close(complete=True)
    replay_due(store, tmp_path)
    assert results(conn)[a][:2] == ("JOB_FINISHED", None)


def test_the_shared_writer_is_nobodys_to_call(store: Store, conn: Any) -> None:
    """Members reach it only through launcher_results (which checks the job's user) and
    the replay (which checks the MACs), never directly."""
    import psycopg

    [a] = add_tasks(conn, 1)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT launcher_write_results(1, 1, ARRAY[%s]::bigint[], "
                     "ARRAY['1'], '{}')", (a,))
