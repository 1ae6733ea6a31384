"""The owner's server lifecycle: init a project, start, stop.

Each step checks what can go wrong *before* it writes anything; ``init`` removes what it
made if a later step fails, so a failed init leaves no half-project behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import sql
from ..base import db
from ..base.errors import (
    BadControlFile,
    BalsamError,
    PermissionDenied,
    ProjectError,
    ServerError,
    ServerNotRunning,
    UsageError,
)
from ..base.project import Project, ServerInfo, dump_toml, this_host, write_atomic
from . import access, cluster, layout, schema
from .accounts import (
    DEFAULT_SERVER_USER,
    Account,
    check_reachable,
    ensure_server_account,
    group_gid,
    group_name,
    owner_only,
)
from .admin import admin_connect
from .pgconf import SUPERUSER_ROLE


@dataclass
class Outcome:
    """What an owner command did, for the CLI to print (and tests to inspect)."""

    info: ServerInfo
    notices: list[str] = field(default_factory=list)


# -- init -------------------------------------------------------------------------------
def init_project(path: str | os.PathLike[str], *, group: str | None = None,
                 port: int | None = None, listen: str = "localhost",
                 server_user: str | None = None) -> Outcome:
    project = Project(path)
    caller = Account.current()
    _check_target(project.root)
    bindir = cluster.find_pg_bin()
    major = cluster.pg_major(bindir)
    notices: list[str] = []

    gid = group_gid(group) if group else None
    if gid is not None and not caller.is_root and gid not in caller.groups:
        raise PermissionDenied(f"you are not in the group {group!r}: pick one of yours "
                               "(`id -Gn` lists them) or ask your admin to add you")
    if caller.is_root:
        server, made = ensure_server_account(server_user or DEFAULT_SERVER_USER, gid)
        notices.extend(made)
        if gid is None:
            gid = server.gid
            notices.append(f"project group: {group_name(gid)!r} (root's projects default to "
                           "the server account's group; pass --group for a shared one)")
    else:
        if server_user and server_user != caller.name:
            raise PermissionDenied("only root can run the server under another account; "
                                   "drop --server-user")
        server = caller
        if gid is None:
            gid = caller.gid
            notices.append(f"project group: {group_name(gid)!r} (your primary group); "
                           "collaborators need a group you share: pass --group")
    check_reachable(project.root.parent, server)
    if port is not None:
        if not 1024 <= port <= 65535:
            raise UsageError(f"--port {port} is out of range: use 1024-65535")
        if not cluster.port_is_free(port):
            raise ServerError(f"port {port} is busy: choose another --port (or omit it)")
    else:
        port = cluster.pick_port()
    project.check_socket_length(port)
    from .pgconf import validate_listen

    try:
        listen = validate_listen(listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    with _hangups_interrupt():
        created_root = not project.root.exists()
        if created_root:
            try:
                project.root.mkdir(mode=0o700)
            except OSError as exc:
                raise ProjectError(f"cannot create {project.root}: {exc.strerror}") from None
        try:
            info = _make_project(project, caller, server, gid, bindir, port, major, listen)
        except BaseException as exc:
            # A second signal must not cut the clean-up short; it is taken after it.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
            try:
                _undo_init(project, server, bindir, created_root)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            # A full disk, a quota or a dying file system reach us as the OS's or the
            # driver's errors: one line, not a traceback.
            if isinstance(exc, OSError):
                where = f": {exc.filename}" if exc.filename else ""
                raise ProjectError(f"init failed ({exc.strerror or exc}{where}); what it "
                                   "had made is removed") from exc
            import psycopg  # here: every dbctl command imports this module

            if isinstance(exc, psycopg.Error):
                raise ServerError(f"init failed ({db.translate(exc)}); what it had made is "
                                  "removed") from exc
            raise
    return Outcome(info, notices)


def _make_project(project: Project, caller: Account, server: Account, gid: int,
                  bindir: Path, port: int, major: int, listen: str) -> ServerInfo:
    layout.create_tree(project, caller, server, gid)
    cluster.initdb(project, bindir, server, SUPERUSER_ROLE)
    info = ServerInfo(
        host=this_host(), port=port, owner_uid=caller.uid, owner_name=caller.name,
        server_uid=server.uid, server_name=server.name, group=group_name(gid),
        pg_major=major, pg_bindir=str(bindir), superuser=SUPERUSER_ROLE, listen=listen,
    )
    cluster.write_server_conf(project, server, port=port, listen=listen,
                              group=info.group, superuser=info.superuser,
                              owner=info.owner_name)
    project.write_server_info(info, gid)
    write_atomic(project.settings_path, dump_toml(default_settings(info)), 0o640, gid=gid)
    cluster.pg_ctl_start(project, bindir, server)
    with admin_connect(project, info, dbname="postgres") as admin:
        schema.bootstrap(admin)
        access.bootstrap_roles(admin, info.owner_name)
    with admin_connect(project, info, autocommit=False) as conn:
        schema.install(conn)
    return _record_instance(project, info, gid)


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class Interrupted(BalsamError):
    """init ended by SIGTERM or SIGHUP, after removing what it had made."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; init removed what "
                         "it had made")
        self.exit_code = 128 + signum


@contextlib.contextmanager
def _hangups_interrupt() -> Iterator[None]:
    """SIGTERM (a batch system, `kill`) and SIGHUP (a dropped ssh session) end init the
    way Ctrl-C does: by an exception, so that what it made is removed. By default they
    end the process where it stands: a half project that blocks the next init, with its
    server left running."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; a library caller keeps its own
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    before = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, old in before.items():
            signal.signal(s, old)


def default_settings(info: ServerInfo) -> dict[str, Any]:
    return {
        "group": info.group,
        "umask": "0007",
        "launcher": {"idle_timeout_s": 10.0, "heartbeat_s": 10.0, "lease_s": 60.0,
                     "drain_grace_s": 30.0},
    }


def _check_target(root: Path) -> None:
    if root.exists() or root.is_symlink():
        if not root.is_dir() or root.is_symlink():
            raise ProjectError(f"{root} exists and is not a directory")
        if (root / "server-info.json").exists():
            # a project, or an init killed before it could clean up, whose server may run
            raise ProjectError(
                f"{root} holds a project (or what an interrupted init left): to start over, "
                f"stop its server (`balsam-dbctl --project {root} stop --fast`) and remove "
                "the directory; or choose a new path")
        if (root / "balsamdb").exists():
            raise ProjectError(f"{root} holds what an interrupted init left (no server was "
                               "started): remove the directory, or choose a new path")
        if any(root.iterdir()):
            raise ProjectError(f"{root} exists and is not empty: choose a new path")
    elif not root.parent.is_dir():
        raise ProjectError(f"{root.parent} does not exist: create it first")


def _undo_init(project: Project, server: Account, bindir: Path, created_root: bool) -> None:
    with contextlib.suppress(BalsamError, OSError):
        if (project.db_dir / "postmaster.pid").exists():
            cluster.pg_ctl_stop(project, bindir, server, "immediate")
    if created_root:
        shutil.rmtree(project.root, ignore_errors=True)
    else:
        for child in list(project.root.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _record_instance(project: Project, info: ServerInfo, gid: int) -> ServerInfo:
    """A fresh nonce and balsamdb's (device, inode), in the database and server-info.json."""
    st = project.db_dir.stat()
    nonce = secrets.token_hex(16)
    with admin_connect(project, info) as conn:
        conn.execute(sql.query("instance_record"),
                     {"nonce": nonce, "dev": st.st_dev, "ino": st.st_ino})
    info = replace(info, instance_nonce=nonce, data_dev=st.st_dev, data_ino=st.st_ino,
                   started_at=time.time(), schema_version=sql.latest_version())
    project.write_server_info(info, gid)
    return info


# -- start / stop -----------------------------------------------------------------------
def start_server(project: Project, *, takeover: bool = False) -> Outcome:
    info = project.read_server_info()
    owner_only(info.owner_uid, info.owner_name, "start")
    notices: list[str] = []
    with cluster.project_lock(project):
        info = project.read_server_info()
        here = this_host()
        if info.host == here and cluster.socket_answers(project, info.port):
            return Outcome(info, [f"the server is already running on {here}:{info.port}"])
        if info.host != here:
            alive = cluster.tcp_answers(info.host, info.port) or cluster.postmaster_pid_exists(
                project)
            if alive and not takeover:
                raise ServerError(
                    f"the server was last started on {info.host}, not here ({here}), and may "
                    f"still run there: stop it on {info.host}, or pass --takeover if that host "
                    "is gone"
                )
            if takeover:
                (project.db_dir / "postmaster.pid").unlink(missing_ok=True)
                notices.append(f"took the project over from {info.host}")
        bindir = cluster.choose_bindir(project, info)
        server = Account.by_name(info.server_name)
        if server.uid != info.server_uid:
            raise ProjectError(f"the server account {info.server_name!r} now has uid "
                               f"{server.uid}, not {info.server_uid}: fix server-info.json")
        check_reachable(project.root, server)
        gid = project.root.stat().st_gid
        port = info.port
        if not cluster.port_is_free(port):
            port = cluster.pick_port()
            notices.append(f"port {info.port} is busy; the server now uses port {port}")
        project.check_socket_length(port)
        _check_conf_values(project, info)
        cluster.write_server_conf(project, server, port=port, listen=info.listen,
                                  group=info.group, superuser=info.superuser,
                                  owner=info.owner_name)
        info = replace(info, host=here, port=port, pg_bindir=str(bindir))
        project.write_server_info(info, gid)
        notices += cluster.clear_reused_lock_files(project, port)
        cluster.pg_ctl_start(project, bindir, server)
        info = _record_instance(project, info, gid)
    return Outcome(info, notices)


def _check_conf_values(project: Project, info: ServerInfo) -> None:
    """What start writes into the server's configuration from server-info.json, checked
    as `init` checked it: a hand-edited value is one line naming the field, not a
    traceback from deep in the writing."""
    from .pgconf import validate_listen

    try:
        validate_listen(info.listen)
    except ValueError:
        raise BadControlFile(f"{project.server_info_path}: listen: {info.listen!r} is not a "
                             "comma-separated list of host names or addresses") from None
    for name in ("group", "superuser", "owner_name"):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", getattr(info, name)):
            raise BadControlFile(f"{project.server_info_path}: {name}: "
                                 f"{getattr(info, name)!r} is not a valid name")


def stop_server(project: Project, *, fast: bool = False) -> Outcome:
    info = project.read_server_info()
    owner_only(info.owner_uid, info.owner_name, "stop")
    with cluster.project_lock(project):
        info = project.read_server_info()
        if info.host != this_host():
            raise ServerError(f"the server runs on {info.host}; stop it there")
        if not cluster.socket_answers(project, info.port):
            raise ServerNotRunning(f"the server for {project.root} is not running")
        if not fast:
            with admin_connect(project, info, dbname="postgres") as conn:
                row = conn.execute(sql.query("server_status_connections")).fetchone()
            others = int(row[0]) if row else 0
            if others:
                raise ServerError(
                    f"{others} client session(s) are connected (launchers or users); stop "
                    "them first, or pass --fast to disconnect them"
                )
        bindir = cluster.choose_bindir(project, info)
        cluster.pg_ctl_stop(project, bindir, Account.by_name(info.server_name),
                            "fast" if fast else "smart")
    return Outcome(info, [f"stopped the server of {project.root}"])


def restart_server(project: Project, *, fast: bool = True) -> Outcome:
    info = project.read_server_info()
    owner_only(info.owner_uid, info.owner_name, "restart")
    notices: list[str] = []
    with contextlib.suppress(ServerNotRunning):
        notices += stop_server(project, fast=fast).notices
    outcome = start_server(project)
    outcome.notices[:0] = notices
    return outcome


def migrate(project: Project) -> list[int]:
    info = project.read_server_info()
    owner_only(info.owner_uid, info.owner_name, "migrate")
    with admin_connect(project, info, dbname="postgres") as admin:
        schema.bootstrap(admin)
        access.bootstrap_roles(admin, info.owner_name)
    with admin_connect(project, info, autocommit=False) as conn:
        return schema.install(conn)


def fix_perms(project: Project) -> list[str]:
    info = project.read_server_info(check_owner=False)
    if os.geteuid() not in (info.owner_uid, 0):
        raise PermissionDenied(f"only the project owner, {info.owner_name}, can fix permissions")
    gid = group_gid(info.group)
    owner = Account.by_uid(info.owner_uid)
    server = Account.by_name(info.server_name)
    return layout.fix_perms(project, owner, server, gid)


def verify(project: Project) -> list[str]:
    """Everything that differs from a healthy project (owner only: it reads balsamdb)."""
    info = project.read_server_info()
    owner_only(info.owner_uid, info.owner_name, "verify")
    problems = layout.mode_problems(project, info.owner_uid, group_gid(info.group))
    if not cluster.socket_answers(project, info.port):
        return [*problems, "the server is not running (start it to check the schema)"]
    with admin_connect(project, info, autocommit=False) as conn:
        problems += schema.verify(conn)
    return problems


def find_pg_bin_or_skip() -> None:
    """For test suites: RuntimeError (a skip reason) when there are no server binaries."""
    try:
        cluster.find_pg_bin()
    except ProjectError as exc:
        raise RuntimeError(str(exc)) from None
