"""Who may use the project's database: roles, collaborators, sessions (docs/architecture.md §6).

The owner (``add-user``, ``drop-user``, ``users``, ``connections``) works as the database
superuser over the socket; a collaborator (``request-access``) works as themselves. Role
statements are DDL, which takes no parameters, so they are composed from the text in
``sql/access.sql`` with ``psycopg.sql.Identifier`` / ``Literal``, never with f-strings.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import asdict, dataclass
from typing import Any

from psycopg import Connection
from psycopg import sql as pgsql

from .. import sql
from ..base import db
from ..base.errors import BalsamError, PermissionDenied, ProjectError, UsageError
from ..base.project import SCHEMA_DB, Project, ServerInfo, this_host
from . import credentials, enroll, rolelimits, viewers
from .accounts import Account, group_gid, uid_of
from .admin import admin_connect
from .pgconf import (
    APP_ADMIN_ROLE,
    MEMBER_ROLE,
    OBJECT_ROLE,
    OWNER_ROLE,
    SUPERUSER_ROLE,
    VIEWER_ROLE,
)

log = logging.getLogger(__name__)

PROJECT_GROUPS = (OWNER_ROLE, MEMBER_ROLE, VIEWER_ROLE, APP_ADMIN_ROLE)
_RESERVED = {SUPERUSER_ROLE, OBJECT_ROLE, *PROJECT_GROUPS, "public", "postgres"}


def _ddl(name: str, **parts: str) -> pgsql.Composed:
    """Statement ``name`` from sql/ with identifiers quoted (``verifier`` as a literal)."""
    values: dict[str, pgsql.Composable] = {
        k: (pgsql.Literal(v) if k == "verifier" else pgsql.Identifier(v))
        for k, v in parts.items()
    }
    return pgsql.SQL(sql.query(name)).format(**values)


# -- at init / migrate ------------------------------------------------------------------
def bootstrap_roles(admin: Connection[Any], owner: str) -> None:
    """As the superuser: the app-admin group, owner rights within member rights, the owner's
    everyday login role (their OS name), and no CONNECT on the maintenance databases."""
    if admin.execute(sql.query("role_exists"), {"name": APP_ADMIN_ROLE}).fetchone() is None:
        admin.execute(_ddl("create_nologin_role", role=APP_ADMIN_ROLE))
    admin.execute(_ddl("access_grant_role", group=MEMBER_ROLE, role=OWNER_ROLE))
    row = admin.execute(sql.query("access_role"), {"name": owner}).fetchone()
    if row is None:
        admin.execute(_ddl("access_create_login_role", role=owner))
    if row is None or not row[1]:  # never demote an old-style superuser of the same name
        admin.execute(_ddl("access_allow_login", role=owner))
        admin.execute(_ddl("access_grant_role", group=OWNER_ROLE, role=owner))
    for maintenance in ("postgres", "template1"):
        admin.execute(_ddl("access_lock_database", db=maintenance))
    apply_role_limits(admin)


def apply_role_limits(admin: Connection[Any]) -> None:
    """Every collaborator's login role gets the limits of its kind (dbctl/rolelimits.py):
    roles enrolled before a project had limits get them at the next `migrate`."""
    rows = admin.execute(sql.query("access_users"), {"groups": list(PROJECT_GROUPS)}).fetchall()
    for role, _has_password, groups in rows:
        if OWNER_ROLE in groups:
            continue
        kind = "member" if MEMBER_ROLE in groups else "viewer"
        rolelimits.apply(admin, role, rolelimits.for_kind(kind))


# -- the owner's commands ---------------------------------------------------------------
def _owner_only(info: ServerInfo, action: str) -> None:
    if os.geteuid() != info.owner_uid:
        me = Account.current().name
        raise PermissionDenied(f"only the project owner, {info.owner_name}, can {action}; "
                               f"ask {info.owner_name} (you are {me})")


def _admin(project: Project, info: ServerInfo) -> Connection[Any]:
    return admin_connect(project, info, dbname="postgres")


def _check_collaborator(info: ServerInfo, name: str) -> Account:
    enroll.check_role_name(name)
    if name == info.owner_name:
        raise UsageError(f"{name} is the project owner: their role is made by `init` "
                         "(run `balsam-dbctl request-access` for TCP access)")
    if name in _RESERVED or name.startswith(("pg_", "balsam_")):
        raise UsageError(f"{name!r} is a reserved role name; it cannot be a collaborator")
    account = Account.by_name(name)
    gid = group_gid(info.group)
    if gid not in account.groups:
        raise UsageError(f"{name} is not in the project group {info.group!r}: outsiders get "
                         f"nothing; ask your admin to add them (`usermod -aG {info.group} "
                         f"{name}`), then run this again")
    return account


def add_user(project: Project, name: str, *, read_only: bool = False,
             app_admin: bool = False) -> list[str]:
    """Authorize ``name`` (idempotent) and apply their request if one waits."""
    info = project.read_server_info()
    _owner_only(info, "add users")
    account = _check_collaborator(info, name)
    if read_only and app_admin:
        raise UsageError("--read-only and --app-admin exclude each other")
    kind = "viewer" if read_only else "member"
    wanted = {VIEWER_ROLE} if read_only else {MEMBER_ROLE}
    if app_admin:
        wanted.add(APP_ADMIN_ROLE)
    # A request file under the user's name that someone else made (a squat: it blocked the
    # user's own request) is reported and removed; then the user's own is checked before
    # anything changes, so a refused one leaves no half-state.
    notes = [line for line in [enroll.clear_squat(project, name, account.uid)] if line]
    request = enroll.read_request(project, name, account.uid)
    if read_only:
        viewers.require_support(project.root, name)  # else the viewer could still write
    with _admin(project, info) as admin, admin.transaction():
        row = admin.execute(sql.query("access_role"), {"name": name}).fetchone()
        if row is not None and row[1]:
            raise UsageError(f"{name} is a database superuser; refusing to change it")
        if row is None:
            admin.execute(_ddl("access_create_login_role", role=name))
        else:
            admin.execute(_ddl("access_allow_login", role=name))
        current = set(row[3]) if row is not None else set()
        for group in sorted(wanted - current):
            admin.execute(_ddl("access_grant_role", group=group, role=name))
        for group in sorted((current & {MEMBER_ROLE, VIEWER_ROLE, APP_ADMIN_ROLE}) - wanted):
            admin.execute(_ddl("access_revoke_role", group=group, role=name))
        rolelimits.apply(admin, name, rolelimits.for_kind(kind))
        # The role exists now (checked above): an ALTER ROLE that fails would log it.
        if request is not None:
            admin.execute(_ddl("access_set_verifier", role=name, verifier=request.verifier))
        enrolled = request is not None or (row is not None and bool(row[2]))
    if request is not None:
        enroll.unlink_request(project, name, request.file_id)
    label = kind + (" with app admin" if app_admin else "")
    log.info("authorized %s as %s", name, label)
    files = viewers.on_add_user(project.root, name, read_only=read_only, enrolled=enrolled)
    if enrolled:
        return [*notes, f"{name} is enrolled as a {label}: they can connect over the socket "
                f"on {info.host} and over TCP from other hosts", *files]
    return [*notes, f"{name} is authorized as a {label}; next, {name} runs `source "
            f"balsamactivate {project.root}` (on {info.host} that completes enrollment; "
            f"elsewhere it leaves a request and you run `balsam-dbctl add-user {name}` once "
            "more)", *files]


def drop_user(project: Project, name: str) -> list[str]:
    """Revoke ``name``: no login, no groups, no password, live sessions ended. Their tasks,
    batch jobs and history stay, still naming them."""
    info = project.read_server_info()
    _owner_only(info, "drop users")
    enroll.check_role_name(name)
    if name in _RESERVED or name == info.owner_name or name.startswith(("pg_", "balsam_")):
        raise UsageError(f"{name!r} is not a collaborator; it cannot be dropped")
    with _admin(project, info) as admin:
        with admin.transaction():
            row = admin.execute(sql.query("access_role"), {"name": name}).fetchone()
            if row is None:
                raise UsageError(f"{name} has no role in this project; nothing to drop")
            if row[1]:
                raise UsageError(f"{name} is a database superuser; refusing to change it")
            for group in sorted(set(row[3]) & set(PROJECT_GROUPS)):
                admin.execute(_ddl("access_revoke_role", group=group, role=name))
            admin.execute(_ddl("access_disable_role", role=name))
        ended_row = admin.execute(sql.query("access_terminate_sessions"),
                                  {"name": name}).fetchone()
    ended = int(ended_row[0]) if ended_row else 0
    enroll.unlink_request(project, name)
    log.info("revoked %s (%d sessions ended)", name, ended)
    return [f"revoked {name}: {ended} live session(s) ended; their tasks stay, "
            "still owned by them", *viewers.on_drop_user(project.root, name)]


@dataclass(frozen=True)
class User:
    role: str
    kind: str  # owner | member | viewer
    app_admin: bool
    state: str  # enrolled (password: TCP too) | socket-only | requested (file waiting)


def list_users(project: Project) -> list[User]:
    info = project.read_server_info()
    _owner_only(info, "list users")
    with _admin(project, info) as admin:
        rows = admin.execute(sql.query("access_users"),
                             {"groups": list(PROJECT_GROUPS)}).fetchall()
    waiting = enroll.request_uids(project)
    planted = {name for name, uid in waiting.items() if uid != uid_of(name)}
    users: list[User] = []
    for role, has_password, groups in rows:
        kind = ("owner" if OWNER_ROLE in groups else
                "member" if MEMBER_ROLE in groups else "viewer")
        state = ("enrolled" if has_password else
                 "requested" if role in waiting and role not in planted else "socket-only")
        if role in planted:
            state += f"; a request under this name was planted by uid {waiting[role]} " \
                     "(add-user removes it)"
        users.append(User(role, kind, APP_ADMIN_ROLE in groups, state))
    known = {u.role for u in users}
    for name in sorted(set(waiting) - known):
        state = (f"request planted by uid {waiting[name]} (add-user removes it)"
                 if name in planted else "requested (not authorized)")
        users.append(User(name, "-", False, state))
    return users


def fix_viewers(project: Project) -> list[str]:
    """``fix-perms``: bring the entries in line with the database's viewers and members
    (when the owner can reach the server; the entries already there stay otherwise)."""
    try:
        users = list_users(project)
        gid = group_gid(project.read_server_info().group)
    except BalsamError:
        return []
    info = project.read_server_info()
    try:
        return viewers.sync_viewers(project.root, viewers.always_writers(
            info.owner_name, info.server_name) + [(u.role, u.kind, u.state) for u in users],
            gid)
    except OSError as exc:
        return [f"could not update the viewers' ACL entries: {exc.strerror}"]


def users_as_dicts(users: list[User]) -> list[dict[str, Any]]:
    return [asdict(u) for u in users]


def format_users(users: list[User]) -> str:
    lines = [f"{'ROLE':<20} {'KIND':<8} {'APP-ADMIN':<9} STATE"]
    lines += [f"{u.role:<20} {u.kind:<8} {'yes' if u.app_admin else 'no':<9} {u.state}"
              for u in users]
    return "\n".join(lines)


def connections(project: Project) -> list[dict[str, Any]]:
    info = project.read_server_info()
    _owner_only(info, "list connections")
    with _admin(project, info) as admin, admin.cursor() as cur:
        cur.execute(sql.query("access_connections"))
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def format_connections(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'USER':<16} {'DATABASE':<12} {'CLIENT':<16} {'APPLICATION':<24} SINCE"]
    for r in rows:
        since = r["since"].strftime("%Y-%m-%d %H:%M:%S") if r["since"] else "-"
        lines.append(f"{r['user'] or '-':<16} {r['database'] or '-':<12} {r['client']:<16} "
                     f"{(r['application'] or '-')[:24]:<24} {since}")
    return "\n".join(lines)


# -- the collaborator's command ---------------------------------------------------------
def request_access(project: Project, *, if_needed: bool = False) -> list[str]:
    """Keep a password in ~/.pgpass and hand its verifier to the server (socket, when our
    role exists and we are on the server's host) or to the owner (a request file)."""
    info = project.read_server_info()
    me = pwd.getpwuid(os.geteuid()).pw_name
    enroll.check_role_name(me)
    hosts = [info.host]
    extra = os.environ.get(db.HOST_ENV)
    if extra and extra not in hosts:
        hosts.append(extra)
    existing = credentials.pgpass_password(hosts, me)
    complete = existing is not None and all(credentials.pgpass_has(h, me) for h in hosts)
    password = existing if existing is not None else credentials.new_password()
    if not complete:
        credentials.pgpass_store(hosts, me, password)
    verifier = credentials.scram_verifier(password)
    # Over the socket the server learns the verifier of the password we keep, even when
    # that password was made for another project on this host: cheap, so always done.
    if _enroll_over_socket(project, info, verifier):
        enroll.remove_own_request(project, me)
        if if_needed and complete:
            return []
        return [f"enrolled {me}: you can connect over the socket on {info.host} and over "
                "TCP from other hosts (password kept in your ~/.pgpass)"]
    if if_needed and complete:
        return []
    if os.geteuid() == info.owner_uid:
        # The owner's role exists from `init`: only the socket is missing.
        return [f"kept a password in your ~/.pgpass; the server must be running: run "
                f"`balsam-dbctl --project {project.root} request-access` again on {info.host} "
                "once it is"]
    path = enroll.write_request(project, me, verifier, this_host())
    return [f"requested access (wrote {path}, no password in it); next, {info.owner_name} "
            f"runs `balsam-dbctl --project {project.root} add-user {me}`"]


def _enroll_over_socket(project: Project, info: ServerInfo, verifier: str) -> bool:
    """On the server's host, once the owner made our role, peer lets us set it ourselves."""
    if info.host != this_host() or not project.socket_path(info.port).exists():
        return False
    try:
        with db.connect(project, autocommit=True, route="socket", dbname=SCHEMA_DB,
                        application_name="balsam-dbctl request-access") as conn, \
                db.translated():
            conn.execute(_ddl("access_set_own_verifier", verifier=verifier))
    except BalsamError:
        return False  # not authorized yet (or the server is down): the request file will do
    except OSError as exc:
        raise ProjectError(f"cannot reach the server socket: {exc.strerror}") from exc
    return True
