"""Who may not write the project's shared directories: the owner's ACL decisions.

``acl.py`` says how a uid is barred (named ``r-x`` entries); this module says whom:
viewers, dropped users and group members not yet authorized are barred, members and the
owner unbarred, at ``init``, ``add-user``, ``drop-user`` and ``fix-perms``. A failure to
set an entry after the database change is one line saying what to run, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..base.acl import apply, supported
from ..base.errors import ProjectError
from .accounts import uid_of


def require_support(project_root: Path, who: str) -> None:
    """Refuse a read-only viewer where the viewer could not be kept from writing."""
    data = project_root / "data"
    try:
        ok = supported(str(data))
    except OSError as exc:
        raise ProjectError(f"cannot check ACL support on {data}: {exc.strerror}") from exc
    if not ok:
        raise ProjectError(
            f"refusing to add {who} read-only: the filesystem of {data} has no POSIX ACLs, "
            "so a viewer in the project group could still write data/, log/ and qsubmit/ "
            "(add them as a member, or move the project to a filesystem with ACLs)")


def _has_acls(project_root: Path) -> bool:
    try:
        return supported(str(project_root / "data"))
    except OSError:
        return False


def _reported(fn: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """The database change is done by then: an ACL that cannot be set is one line saying
    so (and what to run), never a traceback."""

    def wrapped(project_root: Path, name: str, **kw: bool) -> list[str]:
        try:
            return fn(project_root, name, **kw)
        except (OSError, ProjectError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            return [f"could not update the ACL entries for {name} ({why}); run "
                    "`balsam-dbctl fix-perms` once that is fixed"]

    return wrapped


@_reported
def on_add_user(project_root: Path, name: str, *, read_only: bool, enrolled: bool
                ) -> list[str]:
    """After ``add-user``: a viewer is barred from the shared directories (and from
    ``access/`` once enrolled: until then they must be able to leave a request there); a
    member is unbarred everywhere (a former viewer or dropped user)."""
    uid = uid_of(name)
    if uid is None or not _has_acls(project_root):
        return []
    if not read_only:
        apply(project_root, unbar=[uid], access=((), [uid]))
        return []  # a member writes like everyone in the group: nothing to say
    out = apply(project_root, bar=[uid], access=([uid], ()) if enrolled else ((), [uid]))
    lines = [f"{name} reads data/, log/ and qsubmit/ but cannot write there (ACL "
             f"u:{name}:r-x)" + ("" if enrolled else
                                 "; access/ stays writable for their enrollment request "
                                 f"until `balsam-dbctl add-user {name} --read-only` or "
                                 "`fix-perms` runs once they are enrolled")]
    return lines + out.lines("read-only entries")


@_reported
def on_drop_user(project_root: Path, name: str) -> list[str]:
    """After ``drop-user``: a dropped user who is still in the UNIX group reads the
    project's files but writes nothing there any more, and the launchers refuse what they
    made before."""
    uid = uid_of(name)
    if uid is None:
        return []
    if not _has_acls(project_root):
        return [f"this filesystem has no POSIX ACLs: remove {name} from the project's UNIX "
                "group to stop them writing in data/"]
    out = apply(project_root, bar=[uid], access=([uid], ()))
    return [f"{name} can no longer write data/, log/, qsubmit/ or access/"] + out.lines(
        "read-only entries")


def group_members(gid: int) -> set[str]:
    """Who the group database lists in ``gid`` (supplementary members: what an HPC
    project group is; a site that does not enumerate its groups lists nobody)."""
    import grp

    try:
        return set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return set()


def always_writers(owner: str, server: str) -> list[tuple[str, str, str]]:
    """Who writes the shared directories whatever the database says, as (role, kind,
    state) rows beside the database's users: the owner, and the account that runs the
    server (root's projects: an unprivileged account that ``init`` adds to the project
    group; it is no database member, yet barring it is no decision anybody took). ``init``
    and ``fix-perms`` both start from this list, so the second finds nothing to change."""
    return [(owner, "owner", "enrolled"), (server, "server", "enrolled")]


def bar_unauthorized(project_root: Path, gid: int, owner: str, server: str) -> list[str]:
    """At ``init`` (nobody authorized yet but the owner): everyone else in the group reads
    the project's files and writes none of them until ``add-user`` makes them a member."""
    if not _has_acls(project_root):
        return []
    bar, bar_access, unbar = _wanted(always_writers(owner, server), gid)
    out = apply(project_root, bar=bar, unbar=unbar,
                access=(bar_access, unbar | (bar - bar_access)))
    return out.lines("group members not yet authorized")


def sync_viewers(project_root: Path, users: Iterable[tuple[str, str, str]],
                 gid: int | None = None) -> list[str]:
    """For ``fix-perms`` with the server up: ``users`` = (role, kind, state) as
    ``balsam-dbctl users`` lists them, after :func:`always_writers`. Viewers barred
    (enrolled ones from ``access/`` too); members, the owner and the server account
    unbarred; with ``gid``, everyone else the group database lists in the project's group
    barred too (in the group, not authorized)."""
    if not _has_acls(project_root):
        return []
    bar, bar_access, unbar = _wanted(users, gid)
    changed = apply(project_root, bar=bar, unbar=unbar,
                    access=(bar_access, unbar | (bar - bar_access))).changed
    return [f"viewers' ACL entries: {changed} paths updated"] if changed else []


_WRITERS = ("member", "owner", "server")


def _wanted(users: Iterable[tuple[str, str, str]], gid: int | None
            ) -> tuple[set[int], set[int], set[int]]:
    """(barred from the shared directories, barred from access/ too, unbarred): the one
    rule of who writes, for ``init`` and ``fix-perms`` alike."""
    users = list(users)
    bar: set[int] = set()
    bar_access: set[int] = set()
    unbar: set[int] = set()
    if gid is not None:
        known = {role for role, kind, _state in users if kind in (*_WRITERS, "viewer")}
        bar.update(u for n in group_members(gid) - known if (u := uid_of(n)) is not None)
    for role, kind, state in users:
        uid = uid_of(role)
        if uid is None:
            continue
        if kind == "viewer":
            bar.add(uid)
            if state == "enrolled":
                bar_access.add(uid)
        elif kind in _WRITERS:
            unbar.add(uid)
    return bar, bar_access, unbar
