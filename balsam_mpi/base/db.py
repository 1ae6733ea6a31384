"""Connections to the project's database, and the one place driver errors are translated.

On the server's host a client uses the project socket with ``peer`` authentication and
``requirepeer`` set to the server account, so an impostor listening on the socket path
cannot pass. Elsewhere it uses TCP with ``require_auth=scram-sha-256`` so a fake server on
a free port cannot ask for a cleartext password. After connecting, the client checks the
instance nonce: a copied project must not silently talk to the original's live server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import sql
from .errors import DatabaseError, PermissionDenied, ServerError, ServerNotRunning
from .project import SCHEMA_DB, Project, ServerInfo, this_host

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

HOST_ENV = "BALSAM_DB_HOST"  # force TCP to this host (compute nodes without the socket)
NAME_ENV = "BALSAM_DB_NAME"  # another database of the same cluster (the test suite's copies)


def default_dbname() -> str:
    return os.environ.get(NAME_ENV) or SCHEMA_DB


def os_account() -> tuple[str, str]:
    """(name, home) of the calling account, from the password database: the role a client
    logs in as is always its own OS name, whatever $PGUSER or $HOME say."""
    entry = pwd.getpwuid(os.geteuid())
    return entry.pw_name, entry.pw_dir


def conninfo(project: Project, info: ServerInfo, *, dbname: str, user: str | None,
             application_name: str, force_tcp: bool = False,
             route: str = "auto") -> dict[str, Any]:
    """libpq parameters for this project (pure apart from reading the socket's existence).

    The role is ``user`` or the caller's OS name: the owner's is their everyday role (an
    ordinary member with owner rights), never the superuser, which only dbctl asks for.
    ``route``: "auto" (the socket on the server's host, else TCP), "socket" or "tcp".
    """
    name, home = os_account()
    params: dict[str, Any] = {
        "dbname": dbname,
        "port": info.port,
        "application_name": application_name,
        "connect_timeout": 10,
        "user": user or name,
    }
    tcp_host = os.environ.get(HOST_ENV)
    if route == "auto":
        local = info.host == this_host() and project.socket_path(info.port).exists()
        route = "socket" if local and not tcp_host and not force_tcp else "tcp"
    if route == "socket":
        params["host"] = str(project.run_dir)
        params["requirepeer"] = info.server_name
    else:
        params["host"] = tcp_host or info.host
        params["require_auth"] = "scram-sha-256"
        params["sslmode"] = "prefer"
        # A server host that dies, or a network that splits, answers nothing: the kernel's
        # defaults would keep an idle LISTEN waiting for hours and a read blocked for
        # ~15 minutes of retransmissions. Probes after 30 s idle, 6 unanswered 10 s apart,
        # and at most 90 s for what was sent to be acknowledged: the connection fails in
        # about 90 s and the caller's reconnecting takes over. A busy server's kernel still
        # answers probes, so a long statement is not cut.
        params.update(keepalives=1, keepalives_idle=30, keepalives_interval=10,
                      keepalives_count=6, tcp_user_timeout=90_000)
        params["passfile"] = os.environ.get("PGPASSFILE") or os.path.join(home, ".pgpass")
    return params


def connect(
    project: Project,
    *,
    dbname: str | None = None,
    user: str | None = None,
    autocommit: bool = False,
    check_instance: bool = True,
    application_name: str = "balsam_mpi",
    force_tcp: bool = False,
    route: str = "auto",
) -> psycopg.Connection[Any]:
    """A connection to the project's server, checked to be this project's instance."""
    import psycopg

    info = project.read_server_info()
    params = conninfo(project, info, dbname=dbname or default_dbname(), user=user,
                      application_name=application_name, force_tcp=force_tcp, route=route)
    try:
        conn = psycopg.connect(autocommit=autocommit, **params)
    except psycopg.OperationalError as exc:
        raise translate_connect_error(exc, project, info) from exc
    if check_instance:
        try:
            verify_instance(conn, project, info)
        except BaseException:
            conn.close()
            raise
    return conn


def verify_instance(conn: psycopg.Connection[Any], project: Project, info: ServerInfo) -> None:
    """Refuse a server whose instance nonce or data directory is not this project's."""
    import psycopg

    try:
        with conn.cursor() as cur:
            row = cur.execute(sql.query("instance_check")).fetchone()
        if not conn.autocommit:
            conn.rollback()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return  # a database without our schema (e.g. `postgres`): nothing to check
    except psycopg.Error as exc:
        raise translate(exc) from exc
    if row is None:
        raise ServerError(f"the server for {project.root} has no instance record; the owner "
                          "should restart it with `balsam-dbctl restart`")
    nonce, dev, ino = row
    try:
        st = project.db_dir.stat()
        here = (st.st_dev, st.st_ino)
    except OSError:
        here = (dev, ino)  # cannot stat: rely on the nonce alone
    if nonce != info.instance_nonce or here != (dev, ino):
        raise ServerError(
            f"the server at port {info.port} belongs to another copy of this project, not "
            f"{project.root}: the owner should stop that server or start this copy with "
            f"`balsam-dbctl --project {project.root} start`"
        )


def translate_connect_error(exc: Exception, project: Project, info: ServerInfo) -> Exception:
    text = str(exc)
    lowered = text.lower()
    me = os_account()[0]
    if any(s in lowered for s in ("no such file", "connection refused", "could not connect")):
        if "permission denied" in lowered:
            return PermissionDenied(
                f"cannot reach the server socket in {project.run_dir}: you are not in the "
                f"project group {info.group!r}; ask {info.owner_name} to add you to it"
            )
        return ServerNotRunning(
            f"the server for {project.root} is not running on {info.host}:{info.port}; "
            f"the owner, {info.owner_name}, can start it with "
            f"`balsam-dbctl --project {project.root} start` on {info.host}"
        )
    if "permission denied" in lowered:
        return PermissionDenied(
            f"cannot reach the server socket in {project.run_dir}: you are not in the project "
            f"group {info.group!r}; ask {info.owner_name} to add you to it"
        )
    if any(s in lowered for s in ("pg_hba.conf", "peer authentication", "password", "role",
                                  "requirepeer", "require_auth", "authentication")):
        return PermissionDenied(
            f"the server refused {me}: not authorized for this project ({_first_line(text)}); "
            f"run `balsam-dbctl request-access`, then ask {info.owner_name} to run "
            f"`balsam-dbctl add-user {me}`"
        )
    return ServerError(f"cannot connect to the project's server: {_first_line(text)}")


def translate(exc: Exception) -> Exception:
    """A driver error as one of ours, with the server's message (no statement text)."""
    import psycopg

    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return PermissionDenied(f"not allowed: {_first_line(str(exc))}")
    if isinstance(exc, psycopg.errors.OutOfMemory):
        # Most likely the shared lock table, which one session can fill: a running
        # launcher has the database end it within seconds (migration 0031).
        return ServerError(f"the database server is out of shared memory, its lock table "
                           f"most likely full ({_first_line(str(exc))}); see docs/security.md,"
                           f" \"The server's shared queues\"")
    if isinstance(exc, psycopg.OperationalError):
        return ServerError(f"lost the database connection: {_first_line(str(exc))}")
    return DatabaseError(_first_line(str(exc)))


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Translate driver errors raised inside the block (the one boundary)."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from exc


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
