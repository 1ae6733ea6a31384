"""The server's shared structures that no privilege guards (docs/security.md, "The server's
shared queues"), as the real UNIX users: a member who fills the lock table, or holds the
notification queue in a transaction, has that session ended by the database
(``end_hogging_sessions()``, migration 0031), which every launcher's sweep calls; other
sessions, the owner's and a light member's, are never touched."""

from __future__ import annotations

import select
import subprocess

import pytest

from .conftest import MEMBER, MEMBER2, OWNER, VIEWER, Runner, port_of
from .test_06_database_attacks import _rows

Steps = dict[str, subprocess.CompletedProcess[str]]

# A member's session that nests savepoints, each with an INSERT, in one transaction left
# open: every such subtransaction holds a lock on its id in the shared lock table. Sent
# 100 to a round trip (no parameters: the simple protocol takes many statements).
LOCK_HOG = """
import sys, time
from balsam_mpi.base import db
from balsam_mpi.base.project import Project
count, app = int(sys.argv[1]), int(sys.argv[2])
conn = db.connect(Project.from_env(), autocommit=False)
conn.execute("SET idle_in_transaction_session_timeout = 0")
step = ("SAVEPOINT s; INSERT INTO tasks (workflow, app_id, state) "
        "VALUES ('lockhog', " + str(app) + ", 'READY');")
for _ in range(count // 100):
    conn.execute(step * 100)
print(conn.info.backend_pid, flush=True)
time.sleep(600)
"""

# A session that LISTENs and stays in its transaction: the notification queue cannot be
# cleared past it.
LISTEN_HOG = """
import time
from balsam_mpi.base import db
from balsam_mpi.base.project import Project
conn = db.connect(Project.from_env(), autocommit=False)
conn.execute("SET idle_in_transaction_session_timeout = 0")
conn.execute("LISTEN balsam_task_final")
print(conn.info.backend_pid, flush=True)
time.sleep(600)
"""


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the hog never got going"
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read() if proc.stderr else ""
    return line


def _alive(mu: Runner, pid: int) -> bool:
    rows = _rows(mu.probe(VIEWER, [("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                    [pid])]))
    return bool(rows[0][0])


def _superuser(mu: Runner, script: str, **variables: int) -> str:
    """``script`` in psql as the database superuser (the owner's account, over the socket)."""
    assert mu.project is not None
    names = [arg for k, v in variables.items() for arg in ("-v", f"{k}={v}")]
    done = mu.run(OWNER, ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", *names, "-h",
                          str(mu.project / "run"), "-p", str(port_of(mu)), "-U",
                          "balsam_superuser", "balsam"], input_text=script)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture()
def app(mu: Runner, enrolled: Steps) -> int:
    _rows(mu.probe(OWNER, ["INSERT INTO apps (name, command) VALUES ('hello', 'echo') "
                           "ON CONFLICT (name) DO NOTHING RETURNING id"]))
    return int(_rows(mu.probe(OWNER, ["SELECT id FROM apps WHERE name = 'hello'"]))[0][0])


@pytest.mark.timeout(240)
def test_a_member_filling_the_lock_table_is_ended_and_nobody_else(mu: Runner,
                                                                   app: int) -> None:
    """A member's nested savepoints filled the lock table (42,000 entries here); until that
    session ended, other members' updates failed with "out of shared memory"."""
    quarter = int(_rows(mu.probe(VIEWER, [
        "SELECT current_setting('max_locks_per_transaction')::int * "
        "(current_setting('max_connections')::int "
        "+ current_setting('max_prepared_transactions')::int) / 4"]))[0][0])
    assert _rows(mu.probe(MEMBER2, ["SELECT * FROM end_hogging_sessions()"])) == []
    hog = mu.popen(MEMBER, [str(mu.venv / "bin" / "python"), "-c", LOCK_HOG,
                            str(quarter + 1000), str(app)])
    try:
        pid = int(_first_line(hog, 180))
        ended = _rows(mu.probe(MEMBER2, ["SELECT pid, username, reason, held "
                                         "FROM end_hogging_sessions()"]))
        assert [row[:3] for row in ended] == [[pid, MEMBER, "locks"]]
        assert ended[0][3] > quarter
        assert not _alive(mu, pid)
        # Its transaction went with it; the member's other sessions still work.
        count = ("SELECT count(*) FROM tasks WHERE workflow = 'lockhog'", [])
        assert _rows(mu.probe(MEMBER, [count])) == [[0]]
        assert _rows(mu.probe(MEMBER2, ["SELECT * FROM end_hogging_sessions()"])) == []
    finally:
        hog.kill()
        hog.communicate()


SHARE_HOG = """
import sys, time
from balsam_mpi.base import db
from balsam_mpi.base.project import Project
conn = db.connect(Project.from_env(), autocommit=False)
conn.execute("SET idle_in_transaction_session_timeout = 0")
conn.execute("SET statement_timeout = 0")
conn.execute("SELECT count(*) FROM tasks_lock_parents(%s)", ([int(sys.argv[1])],))
print(conn.info.backend_pid, flush=True)
if sys.argv[2] == "active":
    conn.execute("SELECT pg_sleep(600)")
time.sleep(600)
"""

_LIMITS = ("CREATE OR REPLACE FUNCTION session_time_limits(OUT idle_in_transaction interval, "
           "OUT open_transaction interval, OUT open_while_crowded interval) "
           "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT {} $$;")
_CROWDED = ("CREATE OR REPLACE FUNCTION notify_queue_crowded() RETURNS boolean "
            "LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT {} $$;")


def _limits(mu: Runner, seconds: float | None, crowded: bool = False) -> None:
    """The database's limits shortened to ``seconds`` (None: as the migration made them),
    and its queue check made to say crowded, or put back."""
    times = ("interval '2 minutes', interval '1 hour', interval '2 minutes'"
             if seconds is None else ", ".join([f"interval '{seconds} s'"] * 3))
    check = "true" if crowded else "pg_notification_queue_usage() > 0.5"
    _superuser(mu, "SET ROLE balsam_objects;" + _LIMITS.format(times) + _CROWDED.format(check))


@pytest.mark.timeout(120)
def test_a_session_holding_a_crowded_notification_queue_is_ended(mu: Runner,
                                                                  enrolled: Steps) -> None:
    """Filling the queue takes gigabytes and minutes, so the database's two checks are
    replaced for this test (the queue crowded; the two-minute hold shortened), then put
    back. Only the crowded queue's rule can end it: its other limits stay long."""
    hog = mu.popen(VIEWER, [str(mu.venv / "bin" / "python"), "-c", LISTEN_HOG])
    try:
        pid = int(_first_line(hog, 60))
        _superuser(mu, "SELECT pg_sleep(1.5);")
        assert _rows(mu.probe(MEMBER2, ["SELECT * FROM end_hogging_sessions()"])) == []
        _superuser(mu, "SET ROLE balsam_objects;" + _LIMITS.format(
            "interval '1 hour', interval '1 hour', interval '1 s'") + _CROWDED.format("false"))
        assert _rows(mu.probe(MEMBER2, ["SELECT * FROM end_hogging_sessions()"])) == []
        _superuser(mu, "SET ROLE balsam_objects;" + _CROWDED.format("true"))
        ended = _rows(mu.probe(MEMBER2, ["SELECT pid, username, reason "
                                         "FROM end_hogging_sessions()"]))
        assert ended == [[pid, VIEWER, "notifications"]]
        assert not _alive(mu, pid)
    finally:
        _limits(mu, None)
        hog.kill()
        hog.communicate()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["idle", "active"])
def test_share_locks_held_in_a_transaction_past_the_timeouts_are_ended(
        mu: Runner, app: int, how: str) -> None:
    """Any member may share-lock any task (what adding a child takes on its parents): held
    in a transaction with the member's timeouts lifted, no launcher could claim the task.
    The limits (2 minutes idle, an hour open) are shortened to 1 s for the test."""
    theirs = int(_rows(mu.probe(MEMBER2, [(
        "INSERT INTO tasks (workflow, app_id, state) VALUES ('sharehog', %s, 'READY') "
        "RETURNING id", [app])]))[0][0])
    hog = mu.popen(MEMBER, [str(mu.venv / "bin" / "python"), "-c", SHARE_HOG, str(theirs),
                            how])
    try:
        pid = int(_first_line(hog, 60))
        assert _claimable(mu, theirs) == 0  # a launcher's claim would skip it
        assert _rows(mu.probe(MEMBER2, ["SELECT * FROM end_hogging_sessions()"])) == []
        _limits(mu, 1)
        _superuser(mu, "SELECT pg_sleep(1.5);")
        ended = _rows(mu.probe(MEMBER2, ["SELECT pid, username, reason "
                                         "FROM end_hogging_sessions()"]))
        reason = "idle transaction" if how == "idle" else "long transaction"
        assert ended == [[pid, MEMBER, reason]]
        assert not _alive(mu, pid)
        assert _claimable(mu, theirs) == 1
    finally:
        _limits(mu, None)
        hog.kill()
        hog.communicate()


def _claimable(mu: Runner, task: int) -> int:
    """How many of ``task`` a launcher's claim (FOR UPDATE SKIP LOCKED) would take now."""
    return int(_superuser(mu, "SELECT count(*) FROM (SELECT id FROM tasks WHERE id = :task "
                              "FOR UPDATE SKIP LOCKED) t;", task=task).strip())
