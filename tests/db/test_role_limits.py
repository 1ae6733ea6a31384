"""Per-role limits (dbctl/rolelimits.py): connection limits enforced by the server, the
session timeouts collaborators' roles start with, and the launcher lifting its own
statement_timeout. Logins are real (TCP, SCRAM) with roles made for the test; TCP reaches
only the project's own database (pg_hba.conf), so these sessions read it, write nothing,
and are closed before the test ends (it is the template of the other tests' copies)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from balsam_mpi.base import db
from balsam_mpi.base.errors import BalsamError
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import access, credentials, lifecycle, rolelimits

_n = itertools.count()


@pytest.fixture()
def admin(pg_project: Project) -> Iterator[psycopg.Connection[Any]]:
    with lifecycle.admin_connect(pg_project, pg_project.read_server_info(), "postgres") as c:
        yield c


@pytest.fixture()
def login(pg_project: Project, admin: psycopg.Connection[Any], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A member and a viewer who can log in over TCP (passwords in a private pgpass)."""
    tag = f"{os.getpid()}_{next(_n)}"
    made = {"member": (f"l_member_{tag}", "balsam_member"),
            "viewer": (f"l_viewer_{tag}", "balsam_viewer")}
    passfile = tmp_path / "pgpass"
    info = pg_project.read_server_info()
    for role, group in made.values():
        password = credentials.new_password()
        admin.execute(pgsql.SQL("CREATE ROLE {} LOGIN IN ROLE {} PASSWORD {}").format(
            pgsql.Identifier(role), pgsql.Identifier(group),
            pgsql.Literal(credentials.scram_verifier(password))))
        credentials.pgpass_store([info.host, "localhost", "127.0.0.1"], role, password, passfile)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    yield {k: v[0] for k, v in made.items()}
    for role, _group in made.values():
        admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                      "WHERE usename = %s", (role,))
        admin.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))


def _connect(project: Project, role: str, autocommit: bool = True
             ) -> psycopg.Connection[Any]:
    return db.connect(project, dbname="balsam", user=role, route="tcp", autocommit=autocommit)


def _limits(admin: psycopg.Connection[Any], role: str) -> tuple[int, set[str]]:
    from balsam_mpi import sql

    row = admin.execute(sql.query("access_role_settings"), {"name": role}).fetchone()
    assert row is not None
    return int(row[0]), set(row[1])


def test_existing_collaborators_get_the_limits_of_their_kind(
        admin: psycopg.Connection[Any], login: dict[str, str]) -> None:
    access.apply_role_limits(admin)  # what init / migrate run
    for kind, limits in (("member", rolelimits.MEMBER), ("viewer", rolelimits.VIEWER)):
        connections, settings = _limits(admin, login[kind])
        assert connections == limits.connections
        assert settings == {f"{k}={v}" for k, v in limits.settings().items()}


def test_a_role_cannot_open_more_connections_than_its_limit(
        pg_project: Project, admin: psycopg.Connection[Any], login: dict[str, str]) -> None:
    """A viewer once opened 395 connections and locked everyone out."""
    role = login["viewer"]
    rolelimits.apply(admin, role, rolelimits.RoleLimits(2, "1min", "10s", "30s"))
    held = [_connect(pg_project, role) for _ in range(2)]
    try:
        with pytest.raises(BalsamError, match="too many connections for role"):
            _connect(pg_project, role)
        with _connect(pg_project, login["member"]) as other:  # others still get in
            assert other.execute("SELECT 1").fetchone() == (1,)
    finally:
        for c in held:
            c.close()


def test_sessions_start_with_their_roles_timeouts(pg_project: Project,
                                                  admin: psycopg.Connection[Any],
                                                  login: dict[str, str]) -> None:
    rolelimits.apply(admin, login["viewer"], rolelimits.VIEWER)
    with _connect(pg_project, login["viewer"]) as c:
        for name, value in rolelimits.VIEWER.settings().items():
            shown = c.execute(pgsql.SQL("SHOW {}").format(pgsql.Identifier(name))).fetchone()
            assert shown == (value,), name


def test_a_transaction_left_open_is_ended(pg_project: Project,
                                          admin: psycopg.Connection[Any],
                                          login: dict[str, str]) -> None:
    """A forgotten BEGIN (it held the lock every launcher waited for) ends by itself."""
    rolelimits.apply(admin, login["viewer"], rolelimits.RoleLimits(4, "1min", "1s", "1s"))
    conn = _connect(pg_project, login["viewer"], autocommit=False)
    try:
        conn.execute("SELECT count(*) FROM tasks")  # a transaction is open now
        time.sleep(2.5)
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_the_launchers_own_connection_lifts_statement_timeout(
        pg_project: Project, admin: psycopg.Connection[Any], login: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam_mpi.launcher.store import Store

    role = login["member"]
    rolelimits.apply(admin, role, rolelimits.MEMBER)
    monkeypatch.setattr(db, "os_account", lambda: (role, "/nonexistent"))
    monkeypatch.setenv(db.HOST_ENV, "localhost")  # TCP, as on a compute node
    monkeypatch.delenv(db.NAME_ENV, raising=False)
    store = Store.connect(pg_project)
    try:
        assert store.conn.execute("SELECT session_user::text").fetchone() == (role,)
        assert store.conn.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert store.conn.execute("SHOW lock_timeout").fetchone() == (
            rolelimits.MEMBER.lock_timeout,)
    finally:
        store.close()
