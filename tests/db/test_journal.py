"""Journals (0008): what a leader held when it lost the database is written by whoever
sweeps next — before the lease is declared lost, fenced by the epoch, idempotent, in
order — and a line nobody but the job's own leader could have written is refused.

Expiry is made by moving the heartbeat back on the server (no sleeping)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi.base.errors import BalsamError
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.journal import Journal, payload
from balsam_mpi.launcher.lease import sweep_once
from balsam_mpi.launcher.replay import ReplayCache, replay_due
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import Lease
from balsam_mpi.protocol import EndKind, Finished, Started
from tests.db.test_lease import add_tasks, claim, go_silent, open_lease

pytestmark = pytest.mark.timeout(120)


T0 = 1_900_000_000.0


def journal_of(store: Store, lease: Lease, directory: Path,
               started: list[Started], finished: list[Finished]) -> Journal:
    """A leader's journal holding these reports, written and completed."""
    journal = Journal(directory, lease.job_id, lease.epoch, store.journal_key(lease))
    journal.add(1, started, [])
    assert journal.wait_synced(10)
    journal.add(2, [], finished)
    journal.close(complete=True)
    return journal


def rows(conn: Any) -> dict[int, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in conn.execute(
        "SELECT id, state::text, lost_retries, error_retries, batch_job_id FROM tasks")}


def test_a_journal_finishes_what_ended_before_the_lease_ran_out(
        store: Store, conn: Any, tmp_path: Path) -> None:
    a, b, c = add_tasks(conn, 3)
    dead = open_lease(store)
    assert claim(store, dead, 3) == [a, b, c]
    starts = [Started(i, dead.epoch, T0) for i in (a, b, c)]
    store.report(dead, starts, [])  # the starts reached the database, the ends did not
    journal_of(store, dead, tmp_path, starts, [
        Finished(a, dead.epoch, int(EndKind.DONE), 0, T0, T0 + 5),
        Finished(b, dead.epoch, int(EndKind.ERROR), 3, T0, T0 + 6, "boom")])
    go_silent(conn, dead)

    replayed, expired = sweep_once(store, tmp_path)  # journals first, then expiry
    assert [(r.job_id, r.lines, r.finished) for r in replayed] == [(dead.job_id, 3, 1)]
    assert [(e.job_id, e.requeued) for e in expired] == [(dead.job_id, 1)]
    assert rows(conn) == {a: ("JOB_FINISHED", 0, 0, dead.job_id),
                          b: ("FAILED", 0, 0, None),  # its own error, not a lost run
                          c: ("RESTART_READY", 1, 0, None)}  # really lost: counted
    ended = conn.execute("SELECT extract(epoch FROM ended_at)::float8, exit_code FROM tasks "
                         "WHERE id = %s", (a,)).fetchone()
    assert ended == (T0 + 5, 0)  # the node's own time, though written much later
    assert sweep_once(store, tmp_path) == ([], [])  # done: nothing to replay again


def test_forged_lines_are_refused(store: Store, conn: Any, tmp_path: Path) -> None:
    [a] = add_tasks(conn, 1)
    dead = open_lease(store)
    claim(store, dead, 1)
    store.report(dead, [Started(a, dead.epoch, T0)], [])
    key = store.journal_key(dead)
    go_silent(conn, dead)
    done = [Finished(a, dead.epoch, int(EndKind.DONE), 0, T0, T0 + 1)]

    def line(k: bytes, job: int, seq: int) -> tuple[str, str]:
        text = payload(job, dead.epoch, seq, [(1, [], done)])
        return text, hmac.new(k, text.encode(), hashlib.sha256).hexdigest()

    for text, mac in [line(b"\0" * 32, dead.job_id, 1),  # a guessed key
                      line(key, dead.job_id + 1, 1),  # the right key, another job
                      line(key, dead.job_id, 2)]:  # a gap: line 1 never came
        assert store.replay(dead.job_id, dead.epoch, [text], [mac])["lines"] == 0
    text, mac = line(key, dead.job_id, 1)
    tampered = text.replace('[[1,[],[[', '[[1,[],[[' + str(a) + ',1,0,0,0,1,""],[')
    assert tampered != text
    assert store.replay(dead.job_id, dead.epoch, [tampered], [mac])["lines"] == 0
    assert rows(conn)[a][0] == "RUNNING"  # nothing applied
    assert store.replay(dead.job_id, dead.epoch, [text], [mac])["lines"] == 1
    assert rows(conn)[a][0] == "JOB_FINISHED"


def test_a_planted_file_is_not_even_read(store: Store, conn: Any, tmp_path: Path) -> None:
    [a] = add_tasks(conn, 1)
    dead = open_lease(store)
    claim(store, dead, 1)
    store.report(dead, [Started(a, dead.epoch, T0)], [])
    journal = journal_of(store, dead, tmp_path, [], [
        Finished(a, dead.epoch, int(EndKind.DONE), 0, T0, T0 + 1)])
    go_silent(conn, dead)
    # The same lines at another name, as a symlink: never followed.
    (tmp_path / f"journal_{dead.job_id}_{dead.epoch}_planted.jsonl").symlink_to(journal.path)
    journal.path.rename(tmp_path / "elsewhere")
    assert replay_due(store, tmp_path) == []
    assert rows(conn)[a][0] == "RUNNING"


def test_no_replay_while_the_lease_is_held(store: Store, conn: Any, tmp_path: Path) -> None:
    [a] = add_tasks(conn, 1)
    live = open_lease(store)
    claim(store, live, 1)
    journal_of(store, live, tmp_path, [Started(a, live.epoch, T0)], [])
    assert replay_due(store, tmp_path) == []  # not due: its leader writes for itself
    key = store.journal_key(live)
    text = payload(live.job_id, live.epoch, 1, [(1, [Started(a, live.epoch, T0)], [])])
    mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    with pytest.raises(BalsamError, match="still holds its lease"):
        store.replay(live.job_id, live.epoch, [text], [mac])


def test_a_success_written_after_the_requeue_counts_unless_claimed_again(
        store: Store, conn: Any, tmp_path: Path) -> None:
    a, b = add_tasks(conn, 2)
    dead = open_lease(store)
    journal = Journal(tmp_path, dead.job_id, dead.epoch, store.journal_key(dead))
    claim(store, dead, 2)
    store.report(dead, [Started(a, dead.epoch, T0), Started(b, dead.epoch, T0)], [])
    go_silent(conn, dead)
    store.expire_leases()  # a sweep that ran before the journal was complete
    assert rows(conn)[b] == ("RESTART_READY", 1, 0, None)
    other = open_lease(store)
    assert claim(store, other, 1) == [a]  # a is someone else's claim now
    journal.add(1, [], [Finished(i, dead.epoch, int(EndKind.DONE), 0, T0, T0 + 1)
                        for i in (a, b)])
    journal.close(complete=True)
    [replayed] = replay_due(store, tmp_path)
    assert replayed.finished == 1
    assert rows(conn)[b] == ("JOB_FINISHED", 0, 0, None)  # its lost count given back
    assert rows(conn)[a] == ("RESTART_READY", 1, 0, other.job_id)  # left to its claim
    msg = conn.execute("SELECT state_message FROM tasks WHERE id = %s", (b,)).fetchone()
    assert msg is not None and "written from its journal" in msg[0]


def test_replay_is_idempotent_and_resumes_where_it_stopped(
        store: Store, conn: Any, tmp_path: Path) -> None:
    ids = add_tasks(conn, 4)
    dead = open_lease(store)
    claim(store, dead, 4)
    store.report(dead, [Started(i, dead.epoch, T0) for i in ids], [])
    key = store.journal_key(dead)
    go_silent(conn, dead)
    lines = [payload(dead.job_id, dead.epoch, n + 1,
                     [(n + 1, [], [Finished(i, dead.epoch, int(EndKind.DONE), 0, T0, T0 + 1)])])
             for n, i in enumerate(ids)]
    macs = [hmac.new(key, t.encode(), hashlib.sha256).hexdigest() for t in lines]
    assert store.replay(dead.job_id, dead.epoch, lines[:2], macs[:2])["lines"] == 2
    assert store.replay(dead.job_id, dead.epoch, lines, macs)["lines"] == 2  # the rest
    assert store.replay(dead.job_id, dead.epoch, lines, macs)["lines"] == 0
    assert {r[0] for r in rows(conn).values()} == {"JOB_FINISHED"}
    events = conn.execute("SELECT count(*) FROM task_events WHERE to_state = 'JOB_FINISHED'"
                          ).fetchone()
    assert events == (4,)


def test_what_the_live_leader_wrote_is_not_applied_again(su: Any,
        store: Store, conn: Any, tmp_path: Path) -> None:
    """An error, a retry under the same batch job and epoch, then a success that never
    reached the database: the replay must not apply the first run's reports to the
    second run (they were written live; their groups are skipped)."""
    [a] = add_tasks(conn, 1)
    su.execute("UPDATE tasks SET error_retry_limit = 1 WHERE id = %s", (a,))
    dead = open_lease(store)
    journal = Journal(tmp_path, dead.job_id, dead.epoch, store.journal_key(dead))
    claim(store, dead, 1)
    run1 = ([Started(a, dead.epoch, T0)],
            [Finished(a, dead.epoch, int(EndKind.ERROR), 1, T0, T0 + 1, "first")])
    journal.add(1, run1[0], [])
    store.report(dead, run1[0], [], through=1)
    journal.add(2, [], run1[1])
    store.report(dead, [], run1[1], through=2)
    assert claim(store, dead, 1) == [a]  # the retry, same batch job, same epoch
    journal.add(3, [Started(a, dead.epoch, T0 + 2)], [])
    journal.add(4, [], [Finished(a, dead.epoch, int(EndKind.DONE), 0, T0 + 2, T0 + 3)])
    journal.close(complete=True)  # the database never saw groups 3 and 4
    go_silent(conn, dead)
    [replayed] = replay_due(store, tmp_path)
    assert replayed.finished == 1
    row = conn.execute("SELECT state::text, error_retries, extract(epoch FROM started_at)"
                       "::float8 FROM tasks").fetchone()
    assert row == ("JOB_FINISHED", 1, T0 + 2)


def test_a_task_twice_in_unwritten_groups_is_applied_group_by_group(su: Any,
        store: Store, conn: Any) -> None:
    """Defensive: should one task appear in several unwritten groups, they go in order
    (all at once, one UPDATE would pick an arbitrary row per task)."""
    [a] = add_tasks(conn, 1)
    su.execute("UPDATE tasks SET error_retry_limit = 1 WHERE id = %s", (a,))
    dead = open_lease(store)
    key = store.journal_key(dead)
    claim(store, dead, 1)
    go_silent(conn, dead)
    text = payload(dead.job_id, dead.epoch, 1, [
        (1, [Started(a, dead.epoch, T0)], []),
        (2, [], [Finished(a, dead.epoch, int(EndKind.ERROR), 1, T0, T0 + 1)]),
        (3, [Started(a, dead.epoch, T0 + 2)], []),  # no claim any more: refused
        (4, [], [Finished(a, dead.epoch, int(EndKind.DONE), 0, T0 + 2, T0 + 3)])])
    mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    assert store.replay(dead.job_id, dead.epoch, [text], [mac])["lines"] == 1
    row = conn.execute("SELECT state::text, error_retries, batch_job_id FROM tasks"
                       ).fetchone()
    assert row == ("RESTART_READY", 1, None)


def test_journal_keys_are_secret(store: Store, conn: Any, pg_project: Project,
                                 dbname: str) -> None:
    from balsam_mpi.dbctl import lifecycle

    mine = open_lease(store)
    assert len(store.journal_key(mine)) == 32
    assert store.journal_key(mine) == store.journal_key(mine)  # one per epoch
    import psycopg

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT mac_key FROM launcher_journals")
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname) as admin:
        theirs = admin.execute("INSERT INTO batch_jobs (\"user\", state, lease_epoch) VALUES "
                               "('someone_else', 'RUNNING', 1) RETURNING id").fetchone()
    assert theirs is not None
    with pytest.raises(BalsamError, match="only its own launcher"):
        store.journal_key(Lease(theirs[0], 1, False))


def test_the_journal_file_is_what_the_database_checks(store: Store, tmp_path: Path) -> None:
    lease = open_lease(store)
    journal = journal_of(store, lease, tmp_path, [Started(1, lease.epoch, T0)],
                         [Finished(1, lease.epoch, 0, 0, T0, T0 + 1, "ä\n")])
    assert oct(journal.path.stat().st_mode & 0o777) == "0o640"
    lines = journal.path.read_text().splitlines()
    assert len(lines) == 3
    key = store.journal_key(lease)
    for n, raw in enumerate(lines, 1):
        mac, text = raw.split(" ", 1)
        assert hmac.new(key, text.encode(), hashlib.sha256).hexdigest() == mac
        doc = json.loads(text)
        assert (doc["job"], doc["epoch"], doc["seq"]) == (lease.job_id, lease.epoch, n)
    assert json.loads(lines[-1].split(" ", 1)[1]).get("end") is True
    assert replay_due(store, tmp_path, ReplayCache()) == []  # the job is alive
