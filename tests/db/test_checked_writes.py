"""Writes only through checked doors (migrations/0007): what a raw INSERT may set, the
state machine for everyone, locks, id blocks, catalog functions, batch-job adoption.

As test_access.py: one database copy per test, login roles made for the test, and
``SET SESSION AUTHORIZATION`` so that session_user is the role (as a real login).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from balsam_mpi.base import limits
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import lifecycle
from balsam_mpi.tasks.states import TRANSITIONS
from balsam_mpi.tasks.validate import TASK_DEFAULTS

_n = itertools.count()


@pytest.fixture()
def su(pg_project: Project, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname) as conn:
        yield conn


@pytest.fixture()
def roles(su: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    tag = f"{os.getpid()}_{next(_n)}"
    made = {"alice": "balsam_member", "bob": "balsam_member", "vera": "balsam_viewer",
            "boss": "balsam_owner"}
    names = {k: f"w_{k}_{tag}" for k in made}
    for key, group in made.items():
        su.execute(pgsql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            pgsql.Identifier(names[key]), pgsql.Identifier(group)))
    yield names
    su.execute("RESET SESSION AUTHORIZATION")
    for name in names.values():
        su.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


@contextlib.contextmanager
def as_role(su: psycopg.Connection[Any], role: str) -> Iterator[psycopg.Connection[Any]]:
    su.execute(pgsql.SQL("SET SESSION AUTHORIZATION {}").format(pgsql.Identifier(role)))
    try:
        yield su
    finally:
        su.execute("RESET SESSION AUTHORIZATION")


def _error(conn: psycopg.Connection[Any], statement: Any, *args: Any) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement, args or None)
    return info.value


def _app(su: psycopg.Connection[Any]) -> int:
    row = su.execute("INSERT INTO apps (name, command) VALUES ('echo', 'echo') "
                     "ON CONFLICT (name) DO UPDATE SET command = 'echo' RETURNING id"
                     ).fetchone()
    assert row is not None
    return int(row[0])


def _task(conn: psycopg.Connection[Any], app_id: int) -> int:
    row = conn.execute("INSERT INTO tasks (workflow, app_id, state) VALUES ('w', %s, "
                       "'READY') RETURNING id", (app_id,)).fetchone()
    assert row is not None
    return int(row[0])


def _open_job(conn: psycopg.Connection[Any], sched: str = "local",
              sched_id: str | None = None, lease: Any = 60) -> tuple[int, bool]:
    row = conn.execute("SELECT job_id, adopted FROM launcher_open_job(NULL, %s, %s, 'h', 1, "
                       "1, '{}', NULL, %s)", (sched, sched_id, lease)).fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def _base(app_id: int, **extra: Any) -> str:
    """The base record of a bulk add as the client sends it (every default)."""
    return json.dumps({**TASK_DEFAULTS, "workflow": "w", "app_id": app_id, **extra})


def _snapshot(su: psycopg.Connection[Any]) -> list[Any]:
    return su.execute("SELECT t::text FROM tasks t ORDER BY id").fetchall() + su.execute(
        "SELECT b::text FROM batch_jobs b ORDER BY id").fetchall() + su.execute(
        "SELECT count(*) FROM task_events").fetchall()


# -- what a raw INSERT may set -------------------------------------------------------------
@pytest.mark.parametrize("column, value", [
    ("batch_job_id", 1), ("lease_epoch", 7), ("started_at", "2020-01-01"),
    ("ended_at", "2020-01-04"), ("claimed_at", "2020-01-01"), ("created_at", "2020-01-01"),
    ("exit_code", 0), ("output_tail", "x"), ("error_retries", 5), ("timeout_retries", 5),
    ("lost_retries", 5), ("pending_parents", 3), ("failed_by", 1), ("id", 10**12),
    ("state_message", "forged"),
])
def test_a_raw_insert_cannot_set_history_or_claim_columns(
        su: psycopg.Connection[Any], roles: dict[str, str], column: str, value: Any) -> None:
    app_id = _app(su)
    before = _snapshot(su)
    with as_role(su, roles["alice"]) as c:
        err = _error(c, pgsql.SQL("INSERT INTO tasks (workflow, app_id, {}) OVERRIDING "
                                  "SYSTEM VALUE VALUES ('w', %s, %s)").format(
                                      pgsql.Identifier(column)).as_string(c), app_id, value)
    assert err.sqlstate == "42501" and "permission denied" in str(err)
    assert _snapshot(su) == before


@pytest.mark.parametrize("state", ["RUNNING", "JOB_FINISHED", "FAILED", "USER_KILLED",
                                   "RESTART_READY", "RUN_DONE"])
def test_a_raw_insert_starts_in_a_new_tasks_state(su: psycopg.Connection[Any],
                                                  roles: dict[str, str], state: str) -> None:
    app_id = _app(su)
    with as_role(su, roles["alice"]) as c:
        err = _error(c, "INSERT INTO tasks (workflow, app_id, state) VALUES ('w', %s, %s)",
                     app_id, state)
        assert err.sqlstate == "42501" and "row-level security" in str(err)
        for fresh in ("CREATED", "AWAITING_PARENTS", "READY"):
            c.execute("INSERT INTO tasks (workflow, app_id, state) VALUES ('w', %s, %s)",
                      (app_id, fresh))


def test_a_backdated_run_cannot_be_charged_to_another_users_job(
        su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    """The attack that showed 5971 % utilization: a member's own task, marked RUNNING in
    the owner's live batch job since three days ago, by INSERT, UPDATE, or the bulk path."""
    app_id = _app(su)
    with as_role(su, roles["boss"]) as c:
        job, _ = _open_job(c)
    with as_role(su, roles["bob"]) as c:
        mine = _task(c, app_id)
        before = _snapshot(su)
        forged = ("UPDATE tasks SET state = 'RUNNING', batch_job_id = %s, "
                  "started_at = now() - interval '3 days' WHERE id = %s")
        assert _error(c, forged, job, mine).sqlstate == "42501"
        assert _error(c, "INSERT INTO tasks (workflow, app_id, state, batch_job_id, "
                         "started_at) VALUES ('w', %s, 'READY', %s, now() - interval "
                         "'3 days')", app_id, job).sqlstate == "42501"
        assert _snapshot(su) == before
        # The bulk path takes only what a new task may have, whatever the JSON says.
        with c.transaction():
            first = c.execute("SELECT tasks_reserve_ids(1)").fetchone()[0]
            c.execute("SELECT tasks_add(%s::jsonb, %s::jsonb)", (
                _base(app_id, batch_job_id=job, lease_epoch=1, lost_retries=9,
                      started_at="2020-01-01T00:00:00Z", owner=roles["boss"]),
                f'[{{"id": {first}, "state": "READY"}}]'))
    row = su.execute("SELECT owner, batch_job_id, started_at, lease_epoch, lost_retries "
                     "FROM tasks WHERE id = %s", (first,)).fetchone()
    assert row == (roles["bob"], None, None, 0, 0)


def test_bulk_adds_take_only_ids_this_transaction_reserved(
        su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    app_id = _app(su)
    base = _base(app_id)
    with as_role(su, roles["alice"]) as c:
        # Ids ahead of the sequence would make someone's next add fail on the primary key.
        next_id = c.execute("SELECT tasks_reserve_ids(1)").fetchone()[0] + 5
        err = _error(c, "SELECT tasks_add(%s::jsonb, %s::jsonb)", base,
                     f'[{{"id": {next_id}}}]')
        assert err.sqlstate == "42501" and "not reserved by this transaction" in str(err)
        with c.transaction():
            first = c.execute("SELECT tasks_reserve_ids(2)").fetchone()[0]
            c.execute("SELECT tasks_add(%s::jsonb, %s::jsonb)",
                      (base, f'[{{"id": {first}}}, {{"id": {first + 1}}}]'))
        old = _task(c, app_id)
        with c.transaction():  # a child that is not new: `dep` is the door for stored tasks
            c.execute("SELECT tasks_reserve_ids(1)")
            err = _error(c, "SELECT tasks_add_deps(%s, %s)", [old], [first])
        assert err.sqlstate == "42501"
        assert _error(c, "INSERT INTO task_deps VALUES (%s, %s)", old, first
                      ).sqlstate == "42501"
        assert _error(c, "DELETE FROM task_deps").sqlstate == "42501"
        # A new task starts READY, AWAITING_PARENTS with parents pending, or FAILED.
        with c.transaction():
            first = c.execute("SELECT tasks_reserve_ids(1)").fetchone()[0]
            err = _error(c, "SELECT tasks_add(%s::jsonb, %s::jsonb)", base,
                         f'[{{"id": {first}, "state": "RUNNING"}}]')
        assert err.sqlstate == "23514"
    assert su.execute("SELECT count(*) FROM tasks").fetchone() == (3,)


def _advisory_locks(conn: psycopg.Connection[Any], pid: int) -> int:
    row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                       "AND pid = %s", (pid,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_cancelled_reservation_leaves_no_lock_behind(
        pg_project: Project, dbname: str, su: psycopg.Connection[Any],
        roles: dict[str, str]) -> None:
    """A member cancels their own tasks_reserve_ids again and again (pg_cancel_backend
    from a second session of theirs; a statement_timeout or Ctrl-C does the same): the
    reservation's lock must never outlive the call, or every other member's add waits on
    it for as long as that session stays connected (0025)."""
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname) as other, \
            lifecycle.admin_connect(pg_project, info, dbname) as canceller:
        with as_role(su, roles["alice"]) as alice:
            pid = alice.execute("SELECT pg_backend_pid()").fetchone()[0]
            stop = threading.Event()

            def cancel() -> None:
                while not stop.is_set():
                    canceller.execute("SELECT pg_cancel_backend(%s)", (pid,))

            thread = threading.Thread(target=cancel)
            thread.start()
            cancelled = held = 0
            try:
                for _ in range(4000):
                    try:
                        alice.execute("SELECT tasks_reserve_ids(1)")
                    except psycopg.errors.QueryCanceled:
                        cancelled += 1
                    held = _advisory_locks(other, pid)
                    if held or cancelled >= 300:
                        break
            finally:
                stop.set()
                thread.join()
            for _ in range(3):  # a cancel still on its way ends a statement of no account
                try:
                    alice.execute("SELECT 1")
                    break
                except psycopg.errors.QueryCanceled:
                    pass
            assert cancelled > 0, "no call was cancelled: the test proved nothing"
            assert held == 0, (f"alice's session kept the reservation's lock after "
                               f"{cancelled} cancelled calls")
            # and another member's add goes on at once
            with as_role(other, roles["bob"]) as bob:
                bob.execute("SET lock_timeout = '2s'")
                assert bob.execute("SELECT tasks_reserve_ids(3)").fetchone()[0] > 0


def test_no_member_or_viewer_can_lock_a_table_launchers_write(
        su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    for who in ("alice", "vera", "boss"):
        with as_role(su, roles[who]) as c:
            for table in ("tasks", "batch_jobs", "task_deps", "task_events"):
                for mode in ("ROW EXCLUSIVE", "SHARE", "EXCLUSIVE", "ACCESS EXCLUSIVE"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege), c.transaction():
                        c.execute(f"LOCK TABLE {table} IN {mode} MODE")


# -- the state machine -----------------------------------------------------------------------
def test_the_databases_transitions_are_models_transitions(su: psycopg.Connection[Any]) -> None:
    rows = su.execute("SELECT from_state::text, to_state::text FROM task_transitions"
                      ).fetchall()
    assert sorted(rows) == sorted((a.value, b.value) for a, bs in TRANSITIONS.items()
                                  for b in bs)


@pytest.mark.parametrize("path", [
    ("READY", "JOB_FINISHED"), ("READY", "RUN_DONE"), ("READY", "RUNNING", "CREATED"),
    ("READY", "USER_KILLED", "RUNNING"), ("READY", "FAILED", "JOB_FINISHED"),
    ("READY", "RUNNING", "RUN_DONE", "JOB_FINISHED", "READY"),
])
def test_an_illegal_state_change_is_refused_whoever_sends_it(
        su: psycopg.Connection[Any], path: tuple[str, ...]) -> None:
    task = _task(su, _app(su))
    *legal, bad = path[1:]
    for state in legal:
        su.execute("UPDATE tasks SET state = %s WHERE id = %s", (state, task))
    err = _error(su, "UPDATE tasks SET state = %s WHERE id = %s", bad, task)
    assert err.sqlstate == "23514" and "not a state change balsam allows" in str(err)
    assert su.execute("SELECT state::text FROM tasks WHERE id = %s", (task,)).fetchone() == (
        legal[-1] if legal else path[0],)


# -- catalog functions and advisory locks ------------------------------------------------------
@pytest.mark.parametrize("statement", [
    "SELECT lo_from_bytea(0, 'x')", "SELECT lo_create(0)", "SELECT lo_creat(-1)",
    "SELECT lo_unlink(1)", "SELECT pg_advisory_lock(1)", "SELECT pg_advisory_xact_lock(1)",
    "SELECT pg_try_advisory_lock(1)", "SELECT pg_advisory_lock_shared(1, 2)",
    "SELECT pg_try_advisory_xact_lock_shared(1)",
    "SELECT pg_advisory_lock(hashtext('balsam_mpi.tasks_reserve_ids'))",
    "SELECT pg_notify('c', 'x')", "SELECT pg_logical_emit_message(true, 'p', 'x')",
])
def test_large_objects_advisory_locks_and_notify_are_not_public(
        su: psycopg.Connection[Any], roles: dict[str, str], statement: str) -> None:
    for who in ("vera", "alice", "boss"):
        with as_role(su, roles[who]) as c:
            err = _error(c, statement)
            assert err.sqlstate == "42501", (who, str(err))
    with as_role(su, roles["alice"]) as c:  # the definer functions still take their locks
        assert c.execute("SELECT tasks_reserve_ids(3)").fetchone()[0] >= 1


# -- batch jobs ---------------------------------------------------------------------------------
def _filters_of(size: int) -> str:
    """A batch job's filters whose JSON text (as jsonb prints it) is ``size`` bytes: a
    list of workflow names as a launcher given many ``--workflow`` would write."""
    empty = len(json.dumps({"workflows": [""]}))
    full, last = divmod(size - empty, 204)  # a 200-character name, its quotes, ", "
    text = json.dumps({"workflows": ["w" * 200] * full + ["v" * last]})
    assert len(text) == size
    return text


def test_a_batch_jobs_filters_are_capped_for_every_door(
        su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    """Every leader reads every live job's filters once a second (launcher_claim_peers):
    a member who opened a job with 4 MB of filters had every launcher on the project read
    4 MB a second, as the 60 MB parameter once did (0026)."""
    cap = limits.FILTERS_MAX_BYTES
    with as_role(su, roles["alice"]) as c:
        for size in (cap + 1, 4 * 1024 * 1024):
            err = _error(c, "SELECT * FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, "
                            "%s::jsonb, NULL, 60)", _filters_of(size))
            assert err.sqlstate == "23514" and "batch_jobs_filters_limit" in str(err)
            err = _error(c, "SELECT batch_job_submit('local', 'h', 1, %s::jsonb, NULL)",
                         _filters_of(size))
            assert err.sqlstate == "23514" and "batch_jobs_filters_limit" in str(err)
        # adopting a row of one's own with such filters is refused as well
        queued = c.execute("SELECT batch_job_submit('local', 'h', 1, '{}', NULL)"
                           ).fetchone()[0]
        err = _error(c, "SELECT * FROM launcher_open_job(%s, 'local', NULL, 'h', 1, 1, "
                        "%s::jsonb, NULL, 60)", queued, _filters_of(cap + 1))
        assert err.sqlstate == "23514"
        job = c.execute("SELECT job_id FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, "
                        "%s::jsonb, NULL, 60)", (_filters_of(cap),)).fetchone()[0]
        assert c.execute("SELECT octet_length(filters::text) FROM batch_jobs WHERE id = %s",
                         (job,)).fetchone() == (cap,)
        assert c.execute("SELECT launcher_heartbeat(%s, 1)", (job,)).fetchone() == (True,)


_REPORT = ("SELECT * FROM launcher_report(%s, 1, %s, %s, %s, %s::smallint[], %s, %s, %s, "
           "%s)")


def test_a_launcher_cannot_store_a_long_tail_in_the_tasks_it_runs(
        su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    """A member's launcher runs other members' tasks and reports their ends. Its client
    cuts a tail to base/limits.py OUTPUT_TAIL_MAX, but through psql alice wrote 10 MB
    into bob's task (output_tail, and with an end of kind 15 its state_message and the
    history's message too). The database keeps the last OUTPUT_TAIL_MAX characters of a
    tail and the first of a message (0028)."""
    cap = limits.OUTPUT_TAIL_MAX
    app_id = _app(su)
    with as_role(su, roles["bob"]) as c:
        mine = [_task(c, app_id), _task(c, app_id)]
    big = "a" * 100 + "z" * (1024 * 1024)
    with as_role(su, roles["alice"]) as c:
        job, _ = _open_job(c)
        got = c.execute("SELECT id FROM launcher_claim(%s, 1, 10, 100, 1, NULL, NULL, "
                        "NULL, NULL, 10, NULL)", (job,)).fetchall()
        assert sorted(r[0] for r in got) == sorted(mine)
        now = [1.7e9, 1.7e9]
        c.execute(_REPORT, (job, mine, now, [], [], [], [], [], []))
        c.execute(_REPORT, (job, [], [], mine, [1, 15], [1, 1], now, now, [big, big]))
    rows = su.execute("SELECT output_tail, state_message FROM tasks WHERE id = ANY (%s) "
                      "ORDER BY id", (mine,)).fetchall()
    assert rows[0] == (big[-cap:], "exit code 1")  # kind 1: the tail is the output's end
    assert rows[1] == ("", big[:cap])  # kind 15: the tail is the message
    assert su.execute("SELECT max(char_length(message)) FROM task_events WHERE task_id = "
                      "ANY (%s)", (mine,)).fetchone()[0] <= cap


def test_a_squatted_scheduler_id_neither_blocks_nor_is_adopted(
        su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    with as_role(su, roles["bob"]) as c:  # bob records alice's next PBS job id as his
        squat = c.execute("SELECT batch_job_submit('pbs', 'h', 1, '{}', NULL)").fetchone()[0]
        assert c.execute("SELECT batch_job_set_scheduler_id(%s, '4242.pbs')",
                         (squat,)).fetchone() == (squat,)
        # set once: he cannot move it to another id later either
        assert c.execute("SELECT batch_job_set_scheduler_id(%s, '1.pbs')",
                         (squat,)).fetchone() == (None,)
    with as_role(su, roles["alice"]) as c:
        submitted = c.execute("SELECT batch_job_submit('pbs', 'h', 1, '{}', NULL)"
                              ).fetchone()[0]
        c.execute("SELECT batch_job_set_scheduler_id(%s, '4242.pbs')", (submitted,))
        assert c.execute("SELECT batch_job_set_scheduler_id(%s, '9.pbs')",
                         (squat,)).fetchone() == (None,)  # not hers
        job, adopted = _open_job(c, "pbs", "4242.pbs")
        assert (job, adopted) == (submitted, True)
        err = _error(c, "SELECT * FROM launcher_open_job(%s, 'pbs', NULL, 'h', 1, 1, '{}', "
                        "NULL, 60)", squat)
        assert err.sqlstate == "42501" and f"belongs to {roles['bob']}" in str(err)
    with as_role(su, roles["alice"]) as c:  # with no row of hers, a new one, not bob's
        job, adopted = _open_job(c, "pbs", "777.pbs")
    with as_role(su, roles["bob"]) as c:
        c.execute("SELECT batch_job_set_scheduler_id(batch_job_submit('pbs', 'h', 1, '{}', "
                  "NULL), '777.pbs')")
        bobs, bob_adopted = _open_job(c, "pbs", "777.pbs")
    assert not adopted and bob_adopted and bobs != job
    assert su.execute("SELECT state::text FROM batch_jobs WHERE id = %s", (squat,)
                      ).fetchone() == ("QUEUED",)


@pytest.mark.parametrize("lease", [float("inf"), float("nan"), float("-inf"), 0.0, 1e300])
def test_a_lease_of_inf_or_nan_is_refused_and_sweeps_survive(
        su: psycopg.Connection[Any], roles: dict[str, str], lease: float) -> None:
    with as_role(su, roles["alice"]) as c:
        err = _error(c, "SELECT * FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, "
                        "'{}', NULL, %s)", lease)
        assert err.sqlstate == "22023" and "lease_sec" in str(err)
        job, _ = _open_job(c, lease=5)
    # Not even the superuser can store it: the CHECK holds for every writer.
    err = _error(su, "UPDATE batch_jobs SET lease_sec = %s WHERE id = %s", lease, job)
    assert err.sqlstate == "23514" and "batch_jobs_lease_sec_limit" in str(err)
    su.execute("UPDATE batch_jobs SET heartbeat_at = now() - interval '1 hour'")
    with as_role(su, roles["bob"]) as c:
        assert [r[0] for r in c.execute("SELECT job_id FROM launcher_expire_leases()")] == [job]


# -- the SQL door: an empty array means no task ------------------------------------------------
@pytest.mark.parametrize("function", ["tasks_kill", "tasks_retry", "tasks_delete"])
def test_an_empty_array_changes_nothing_and_null_is_refused(
        su: psycopg.Connection[Any], roles: dict[str, str], function: str) -> None:
    app_id = _app(su)
    with as_role(su, roles["boss"]) as c:
        for _ in range(3):
            _task(c, app_id)
        before = _snapshot(su)
        call = pgsql.SQL("SELECT * FROM {}(%s)").format(pgsql.Identifier(function))
        assert c.execute(call, ([],)).fetchall() == []
        err = _error(c, call.as_string(c), None)
        assert err.sqlstate == "22004" and "NULL does not mean every task" in str(err)
        assert c.execute("SELECT * FROM tasks_modify('{}', '{\"priority\": 1}')"
                         ).fetchall() == []
    assert _snapshot(su) == before
