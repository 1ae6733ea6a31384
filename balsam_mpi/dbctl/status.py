"""What anyone in the project group may ask: is the server up, where, and how is it."""

from __future__ import annotations

import os
import re
import shlex
import time
from typing import Any

from .. import sql
from ..base import db
from ..base.errors import BalsamError, PermissionDenied, ProjectError
from ..base.project import ENV_VAR, Project, this_host
from . import cluster
from .access import request_access
from .accounts import Account


def server_status(project: Project) -> dict[str, Any]:
    """Facts about the server; the database details only when the caller may connect."""
    info = project.read_server_info()
    here = this_host()
    if info.host == here:
        running = cluster.socket_answers(project, info.port)
    else:
        running = cluster.tcp_answers(info.host, info.port)
    status: dict[str, Any] = {
        "project": str(project.root),
        "running": running,
        "host": info.host,
        "port": info.port,
        "socket": str(project.socket_path(info.port)),
        "owner": info.owner_name,
        "server_account": info.server_name,
        "group": info.group,
        "pg_major": info.pg_major,
        "pg_bindir": info.pg_bindir,
        "listen": info.listen,
        "started_at": info.started_at or None,
    }
    if not running:
        return status
    try:
        with db.connect(project, autocommit=True, application_name="balsam-dbctl status") as conn:
            row = conn.execute(sql.query("server_status")).fetchone()
    except BalsamError as exc:
        status["details_unavailable"] = str(exc)
        return status
    assert row is not None
    version, uptime, connections, _others, size, schema_version = row
    status.update(server_version=version, uptime_s=round(float(uptime), 1),
                  connections=int(connections), database_bytes=int(size),
                  schema_version=int(schema_version))
    return status


def format_status(status: dict[str, Any]) -> str:
    lines = [f"project         {status['project']}"]
    state = "running" if status["running"] else "stopped"
    lines.append(f"server          {state} on {status['host']}:{status['port']}")
    lines.append(f"socket          {status['socket']}")
    lines.append(f"owner           {status['owner']} (server account {status['server_account']}, "
                 f"group {status['group']})")
    lines.append(f"postgres        {status.get('server_version') or status['pg_major']} "
                 f"({status['pg_bindir']})")
    if "uptime_s" in status:
        lines.append(f"uptime          {_duration(status['uptime_s'])}")
        lines.append(f"connections     {status['connections']}")
        lines.append(f"database size   {status['database_bytes'] / 2**20:.1f} MiB")
        lines.append(f"schema version  {status['schema_version']}")
    elif "details_unavailable" in status:
        lines.append(f"details         unavailable: {status['details_unavailable']}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600}h {s % 3600 // 60}m {s % 60}s"


# -- activation -------------------------------------------------------------------------
_SAFE_PATH = re.compile(r"^[^\x00-\x1f\x7f]+$")


def activation_code(path: str, *, start_if_owner: bool = True,
                    enroll: bool = False) -> tuple[str, list[str]]:
    """Shell code for `eval` (exports, umask) and messages for stderr.

    With ``enroll`` (what `source balsamactivate` asks for), a caller without credentials
    for this project requests access first (`request-access`), so the one message they
    see is the next step.

    The path is made absolute, checked for control characters and quoted with
    shlex.quote, so nothing in it can be executed by the eval.
    """
    if not path:
        raise ProjectError("usage: source balsamactivate PROJECT")
    project = Project(path)
    if not _SAFE_PATH.match(str(project.root)):
        raise ProjectError("the project path contains control characters; rename it")
    info = project.read_server_info()
    project.check_socket_length(info.port)
    messages: list[str] = []
    running = (cluster.socket_answers(project, info.port) if info.host == this_host()
               else cluster.tcp_answers(info.host, info.port))
    if not running:
        if os.geteuid() == info.owner_uid and info.host == this_host() and start_if_owner:
            from .lifecycle import start_server

            outcome = start_server(project)
            messages.extend(outcome.notices)
            messages.append(f"started the server on {outcome.info.host}:{outcome.info.port}")
            running = True
        else:
            messages.append(
                f"warning: the server is not running; {info.owner_name} can start it with "
                f"`balsam-dbctl --project {project.root} start` on {info.host}"
            )
    requested: list[str] = []
    if running and enroll:
        try:
            requested = request_access(project, if_needed=True)
        except BalsamError as exc:
            requested = [f"warning: could not request access: {exc}"]
        messages.extend(requested)
    if running:
        try:
            with db.connect(project, autocommit=True):
                pass
            messages.append(f"connected to the balsam project at {project.root}")
        except PermissionDenied as exc:
            if not any("requested access" in line for line in requested):
                messages.append(f"warning: {exc}")
        except BalsamError as exc:
            messages.append(f"warning: {exc}")
    old_umask = os.umask(0)
    os.umask(old_umask)
    new_umask = old_umask & ~0o070
    code = "\n".join([
        f"export _BALSAM_OLD_DB_PATH={shlex.quote(os.environ.get(ENV_VAR, ''))}",
        f"export _BALSAM_OLD_UMASK={old_umask:04o}",
        f"export {ENV_VAR}={shlex.quote(str(project.root))}",
        f"umask {new_umask:04o}",
    ])
    return code + "\n", messages


def whoami() -> str:
    return Account.current().name


def since(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
