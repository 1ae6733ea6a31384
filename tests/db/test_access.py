"""Least privilege inside the database (0002_access.sql), on the session cluster.

Each test works in its own database copy. Login roles are cluster-wide, so they get
unique names and are dropped afterwards. ``SET SESSION AUTHORIZATION`` (superuser only)
makes session_user the test role, exactly as a real login would; real logins, over the
socket and TCP as real UNIX users, are the multiuser tier's job.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from balsam_mpi.base import db
from balsam_mpi.base.errors import PermissionDenied
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import credentials, lifecycle

_n = itertools.count()


@pytest.fixture()
def su(pg_project: Project, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    info = pg_project.read_server_info()
    with lifecycle.admin_connect(pg_project, info, dbname) as conn:
        yield conn


@pytest.fixture()
def roles(su: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    """Login roles: two members, a viewer, an app admin and an owner-rights role."""
    tag = f"{os.getpid()}_{next(_n)}"
    made = {"alice": "balsam_member", "bob": "balsam_member", "vera": "balsam_viewer",
            "appy": "balsam_member", "boss": "balsam_owner"}
    names = {k: f"t_{k}_{tag}" for k in made}
    for key, group in made.items():
        su.execute(pgsql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            pgsql.Identifier(names[key]), pgsql.Identifier(group)))
    su.execute(pgsql.SQL("GRANT balsam_app_admin TO {}").format(pgsql.Identifier(names["appy"])))
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


def _denied(conn: psycopg.Connection[Any], statement: str, *args: Any) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement, args or None)
    return str(info.value)


def _app(su: psycopg.Connection[Any]) -> int:
    row = su.execute("INSERT INTO apps (name, command) VALUES ('echo', 'echo') RETURNING id"
                     ).fetchone()
    assert row is not None
    return int(row[0])


def _task(conn: psycopg.Connection[Any], app_id: int, state: str = "READY") -> int:
    row = conn.execute("INSERT INTO tasks (workflow, app_id, state) VALUES ('w', %s, %s) "
                       "RETURNING id", (app_id, state)).fetchone()
    assert row is not None
    return int(row[0])


def test_members_change_only_their_own_tasks(su: psycopg.Connection[Any],
                                             roles: dict[str, str]) -> None:
    app_id = _app(su)
    with as_role(su, roles["alice"]) as c:
        mine = _task(c, app_id)
        assert c.execute("SELECT owner FROM tasks WHERE id = %s", (mine,)).fetchone() == (
            roles["alice"],)
        assert "row-level security" in _denied(
            c, "INSERT INTO tasks (workflow, app_id, owner) VALUES ('w', %s, %s)",
            app_id, roles["bob"])
    with as_role(su, roles["bob"]) as c:
        theirs = _task(c, app_id)
        # Another member's task: readable; its plain columns invisible to UPDATE (0 rows);
        # the change functions leave it alone and say why.
        assert c.execute("SELECT count(*) FROM tasks").fetchone() == (2,)
        assert c.execute("UPDATE tasks SET priority = 5 WHERE id = %s", (mine,)).rowcount == 0
        assert c.execute("SELECT * FROM tasks_kill(%s)", ([mine],)).fetchall() == [
            (mine, f"not yours (owner {roles['alice']})")]
        assert c.execute("SELECT * FROM tasks_delete(%s)", ([mine],)).fetchall() == [
            (mine, f"not yours (owner {roles['alice']})")]
        assert c.execute("SELECT * FROM tasks_modify(%s, '{\"params\": {\"x\": 1}}')",
                         ([mine],)).fetchall()[0][1].startswith("not yours")
        # Their own: plain columns directly, the rest through the functions.
        assert c.execute("UPDATE tasks SET priority = 5 WHERE id = %s",
                         (theirs,)).rowcount == 1
        assert c.execute("SELECT * FROM tasks_kill(%s)", ([theirs],)).fetchall() == [
            (theirs, "killed")]
        # No table-level UPDATE or DELETE, for anyone but the superuser.
        for attack in ("UPDATE tasks SET state = 'READY'", "UPDATE tasks SET owner = 'x'",
                       "UPDATE tasks SET batch_job_id = 1", "DELETE FROM tasks"):
            assert "permission denied" in _denied(c, attack)
    with as_role(su, roles["boss"]) as c:  # owner rights: any task, through the functions
        assert c.execute("UPDATE tasks SET priority = 6 WHERE id = %s", (mine,)).rowcount == 1
        assert c.execute("SELECT * FROM tasks_kill(%s)", ([mine],)).fetchall() == [
            (mine, "killed")]
        assert c.execute("SELECT * FROM tasks_delete(%s)", ([theirs],)).fetchall() == [
            (theirs, "deleted")]
        assert "permission denied" in _denied(c, "DELETE FROM tasks")
    # Immutable for everyone, the superuser included.
    assert "cannot change" in _denied(su, "UPDATE tasks SET owner = 'x' WHERE id = %s", mine)


def test_history_is_written_by_triggers_and_never_by_members(
        su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    app_id = _app(su)
    with as_role(su, roles["alice"]) as c:
        task = _task(c, app_id)
        c.execute("SELECT * FROM tasks_kill(%s)", ([task],))
        events = c.execute("SELECT to_state::text, actor FROM task_events WHERE task_id = %s "
                           "ORDER BY id", (task,)).fetchall()
        assert events == [("READY", roles["alice"]), ("USER_KILLED", roles["alice"])]
        for attack in ("INSERT INTO task_events (task_id, to_state) VALUES (1, 'READY')",
                       "UPDATE task_events SET message = 'forged'",
                       "DELETE FROM task_events",
                       "TRUNCATE task_events"):
            assert "permission denied" in _denied(c, attack)


def test_viewers_read_and_write_nothing(su: psycopg.Connection[Any],
                                        roles: dict[str, str]) -> None:
    app_id = _app(su)
    _task(su, app_id)
    with as_role(su, roles["vera"]) as c:
        assert c.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
        assert c.execute("SELECT count(*) FROM task_events").fetchone() == (1,)
        for attack in ("INSERT INTO tasks (workflow, app_id) VALUES ('w', 1)",
                       "UPDATE tasks SET priority = 1",
                       "DELETE FROM tasks",
                       "INSERT INTO batch_jobs DEFAULT VALUES",
                       "INSERT INTO apps (name, command) VALUES ('x', 'y')",
                       "SELECT * FROM tasks_kill('{1}')",
                       "SELECT * FROM tasks_modify('{1}', '{\"priority\": 1}')",
                       "SELECT * FROM tasks_retry('{1}')",
                       "SELECT * FROM tasks_delete('{1}')",
                       "SELECT tasks_add_dependency(1, 2)",
                       "SELECT tasks_reserve_ids(1)",
                       "SELECT tasks_add('{}', '[]')",
                       "SELECT batch_job_submit('local', 'h', 1, '{}', NULL)",
                       "SELECT * FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, '{}', "
                       "NULL, 60)",
                       "SELECT * FROM launcher_expire_leases()"):
            assert "permission denied" in _denied(c, attack), attack
    assert su.execute("SELECT count(*) FROM tasks WHERE priority = 0").fetchone() == (1,)


def test_apps_are_written_by_the_owner_and_app_admins_only(
        su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    with as_role(su, roles["alice"]) as c:
        assert "permission denied" in _denied(
            c, "INSERT INTO apps (name, command) VALUES ('a1', 'true')")
    for who in ("appy", "boss"):
        with as_role(su, roles[who]) as c:
            c.execute("INSERT INTO apps (name, command) VALUES (%s, 'true')", (who,))
    assert su.execute("SELECT count(*) FROM apps").fetchone() == (2,)


def test_members_cannot_escalate(su: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    with as_role(su, roles["alice"]) as c:
        for statement in ("CREATE TABLE mine (x int)",
                          "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                          "COPY (SELECT 1) TO PROGRAM 'id'",
                          "COPY tasks FROM PROGRAM 'id'",
                          "GRANT balsam_owner TO CURRENT_USER",
                          "ALTER ROLE CURRENT_USER SUPERUSER",
                          "ALTER ROLE CURRENT_USER BYPASSRLS",
                          "ALTER TABLE tasks DISABLE ROW LEVEL SECURITY",
                          "DROP POLICY tasks_change_own ON tasks",
                          "SET ROLE balsam_objects"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)


def _open_job(c: psycopg.Connection[Any]) -> int:
    row = c.execute("SELECT job_id FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, "
                    "'{}', NULL, 60)").fetchone()
    assert row is not None
    return int(row[0])


def test_heartbeat_only_by_the_batch_jobs_own_user(su: psycopg.Connection[Any],
                                                   roles: dict[str, str]) -> None:
    with as_role(su, roles["alice"]) as c:
        job = _open_job(c)
        assert c.execute("SELECT \"user\" FROM batch_jobs WHERE id = %s", (job,)
                         ).fetchone() == (roles["alice"],)
        assert c.execute("SELECT batch_job_heartbeat(%s)", (job,)).fetchone() is not None
        for attack in ("INSERT INTO batch_jobs (state) VALUES ('RUNNING')",
                       "UPDATE batch_jobs SET heartbeat_at = now()"):
            assert "permission denied" in _denied(c, attack)
    with as_role(su, roles["bob"]) as c:
        assert f"belongs to {roles['alice']}" in _denied(
            c, "SELECT batch_job_heartbeat(%s)", job)
        assert "permission denied" in _denied(
            c, "UPDATE batch_jobs SET heartbeat_at = now() WHERE id = %s", job)
    with as_role(su, roles["vera"]) as c:
        assert "permission denied" in _denied(c, "SELECT batch_job_heartbeat(%s)", job)


def test_no_function_is_executable_by_public_and_definers_pin_search_path(
        su: psycopg.Connection[Any]) -> None:
    public_exec = su.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.pronamespace = 'public'::regnamespace AND (p.proacl IS NULL OR "
        "EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0))").fetchall()
    assert public_exec == []
    unpinned = su.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef "
        "AND NOT coalesce(p.proconfig::text LIKE '%search_path=pg_catalog, public%', false)"
    ).fetchall()
    assert unpinned == []
    owners = su.execute("SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class "
                        "WHERE relnamespace = 'public'::regnamespace").fetchall()
    assert owners == [("balsam_objects",)]


def test_our_scram_verifier_is_the_one_postgres_makes(pg_project: Project,
                                                      su: psycopg.Connection[Any],
                                                      roles: dict[str, str]) -> None:
    role = roles["alice"]
    su.execute(pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(
        pgsql.Identifier(role), pgsql.Literal("pencil")))
    row = su.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    assert row is not None
    theirs = str(row[0])
    head, _keys = theirs.rsplit("$", 1)
    iterations, salt_b64 = head.split("$")[1].split(":")
    ours = credentials.scram_verifier("pencil", salt=base64.b64decode(salt_b64),
                                 iterations=int(iterations))
    assert ours == theirs and credentials.is_well_formed_verifier(ours)


def test_a_verifier_we_apply_lets_its_password_log_in_over_tcp(
        pg_project: Project, su: psycopg.Connection[Any], roles: dict[str, str],
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    role = roles["alice"]
    password = credentials.new_password()
    su.execute(pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(
        pgsql.Identifier(role), pgsql.Literal(credentials.scram_verifier(password))))
    info = pg_project.read_server_info()
    passfile = tmp_path / "pgpass"
    credentials.pgpass_store([info.host], role, password, passfile)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    with db.connect(pg_project, dbname="balsam", user=role, route="tcp",
                    autocommit=True) as conn:
        assert conn.execute("SELECT session_user::text").fetchone() == (role,)
    for name, content in (("wrong", "not-the-password"), ("none", None)):
        if content is not None:
            credentials.pgpass_store([info.host], role, content, tmp_path / name)
        monkeypatch.setenv("PGPASSFILE", str(tmp_path / name))
        with pytest.raises(PermissionDenied, match="request-access"):
            db.connect(pg_project, dbname="balsam", user=role, route="tcp")


def test_a_tcp_connection_notices_a_peer_that_vanished(
        pg_project: Project, su: psycopg.Connection[Any], roles: dict[str, str],
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over TCP (a login node or a compute node away from the server's host) a server
    host that dies or a network that splits sends nothing back: without keepalives an
    idle LISTEN waits for ever and a read blocks for the kernel's ~15 minutes of
    retransmissions. The socket itself must carry keepalives and a user timeout."""
    import socket

    role = roles["alice"]
    password = credentials.new_password()
    su.execute(pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(
        pgsql.Identifier(role), pgsql.Literal(credentials.scram_verifier(password))))
    info = pg_project.read_server_info()
    credentials.pgpass_store([info.host], role, password, tmp_path / "pgpass")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "pgpass"))
    with db.connect(pg_project, dbname="balsam", user=role, route="tcp",
                    autocommit=True) as conn:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            assert idle + interval * count <= 120  # a dead peer is noticed in minutes
            user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert 0 < user_timeout <= 120_000
        finally:
            sock.close()


def test_only_end_hogging_sessions_may_signal_a_backend(su: psycopg.Connection[Any]) -> None:
    """balsam_objects holds pg_signal_backend and pg_read_all_stats (dbctl/schema.py) for
    the one function of migration 0031; every definer function runs as balsam_objects, so
    no other may signal a backend or read other sessions' activity."""
    granted = su.execute("SELECT pg_has_role('balsam_objects', 'pg_signal_backend', 'MEMBER'),"
                         " pg_has_role('balsam_objects', 'pg_read_all_stats', 'MEMBER')"
                         ).fetchone()
    assert granted == (True, True)
    for uses in ("pg_terminate_backend|pg_cancel_backend|pg_signal_backend",
                 "pg_stat_activity|pg_stat_get_activity|pg_stat_get_backend"):
        signalling = su.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace "
            "AND p.prosrc ~* %s", (f"({uses})",)).fetchall()
        assert signalling == [("end_hogging_sessions",)], uses
    # Nothing to end among the test's own (superuser) sessions.
    assert su.execute("SELECT * FROM end_hogging_sessions()").fetchall() == []
