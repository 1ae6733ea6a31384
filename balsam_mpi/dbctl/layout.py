"""The project directory's layout and modes (docs/architecture.md §3), applied whatever the umask.

``init`` creates the tree with these modes and ``fix-perms`` re-applies them. Each entry
is created with an explicit mode and then ``chmod``-ed, because ``mkdir`` honours the
umask and a plain ``chmod 770`` would drop the setgid bit.

Where the filesystem keeps POSIX ACLs, the group-writable directories also get a default
ACL (``acl.py``): at ``init`` one equal to their mode, so what members make inside gets
the group's rights whatever their umask; later the read-only entries of viewers and
dropped users, which ``fix-perms`` re-applies from ``data/``'s ACL, the record of them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..base import acl
from ..base.errors import ProjectError
from ..base.project import (
    MODE_ACCESS,
    MODE_CONTROL,
    MODE_DATA,
    MODE_DB,
    MODE_LOG,
    MODE_LOG_SERVER,
    MODE_RUN,
    MODE_TEMPLATES,
    MODE_TOP,
    Project,
)
from . import viewers
from .accounts import Account


@dataclass(frozen=True)
class Entry:
    relpath: str  # "" is the project directory itself
    mode: int
    by_server: bool  # owned by the server account rather than the owner
    is_dir: bool = True


ENTRIES: tuple[Entry, ...] = (
    Entry("", MODE_TOP, by_server=False),
    Entry("balsamdb", MODE_DB, by_server=True),
    Entry("job-templates", MODE_TEMPLATES, by_server=False),
    Entry("access", MODE_ACCESS, by_server=False),
    Entry("data", MODE_DATA, by_server=False),
    Entry("log", MODE_LOG, by_server=False),
    Entry("log/server", MODE_LOG_SERVER, by_server=True),
    Entry("run", MODE_RUN, by_server=True),
    # Rendered batch scripts; sticky so nobody replaces a script another member submitted.
    Entry("qsubmit", MODE_ACCESS, by_server=False),
    Entry("server-info.json", MODE_CONTROL, by_server=False, is_dir=False),
    Entry("settings.toml", MODE_CONTROL, by_server=False, is_dir=False),
)


def create_tree(project: Project, owner: Account, server: Account, gid: int) -> None:
    """Make the directories (not balsamdb's contents) with their exact modes and owners."""
    for entry in ENTRIES:
        if not entry.is_dir:
            continue
        path = project.root / entry.relpath if entry.relpath else project.root
        if entry.relpath:
            path.mkdir(mode=0o700, exist_ok=False)
        _own_and_mode(path, entry, owner, server, gid)
        if entry.relpath in acl.SHARED:
            acl.init_defaults(path)  # False without ACLs: add-user --read-only says so
    viewers.bar_unauthorized(project.root, gid, owner.name, server.name)


def fix_perms(project: Project, owner: Account, server: Account, gid: int) -> list[str]:
    """Re-apply owners and modes; returns what changed, one line each."""
    changed: list[str] = []
    for entry in ENTRIES:
        path = project.root / entry.relpath if entry.relpath else project.root
        if not path.exists() and not path.is_symlink():
            if not entry.is_dir:
                continue
            if entry.relpath in ("", "balsamdb"):
                raise ProjectError(f"{path} is missing; this is not a complete project")
            path.mkdir(mode=0o700)  # a directory added to the layout after this project
            _own_and_mode(path, entry, owner, server, gid)
            changed.append(f"{path}: created ({entry.mode:04o})")
            continue
        if path.is_symlink():
            raise ProjectError(f"{path} is a symlink; refusing to follow it (remove it first)")
        before = path.stat()
        _own_and_mode(path, entry, owner, server, gid)
        after = path.stat()
        if (before.st_mode, before.st_uid, before.st_gid) != (after.st_mode, after.st_uid,
                                                               after.st_gid):
            changed.append(f"{path}: {stat.S_IMODE(before.st_mode):04o} -> "
                           f"{stat.S_IMODE(after.st_mode):04o}")
    # Who is barred lives in data/'s ACL; give it again to the other shared directories
    # and to whatever in data/ the owner owns (a restore, a copy, a hand-made directory).
    barred = acl.barred_in(project.root)
    if barred:
        changed += acl.apply(project.root, bar=barred).lines("read-only entries")
    return changed


def _own_and_mode(path: Path, entry: Entry, owner: Account, server: Account, gid: int) -> None:
    uid = server.uid if entry.by_server else owner.uid
    if os.geteuid() == 0:
        os.lchown(path, uid, gid)
    elif path.stat().st_gid != gid:
        os.chown(path, -1, gid)
    os.chmod(path, entry.mode)


def mode_problems(project: Project, owner_uid: int, gid: int) -> list[str]:
    """Differences between the tree and the layout (for `verify` and the tests)."""
    problems: list[str] = []
    for entry in ENTRIES:
        path = project.root / entry.relpath if entry.relpath else project.root
        try:
            st = path.lstat()
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        except PermissionError:
            continue
        if stat.S_IMODE(st.st_mode) != entry.mode:
            problems.append(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, "
                            f"expected {entry.mode:04o}")
        if st.st_gid != gid and entry.relpath != "balsamdb":
            problems.append(f"{path} has group {st.st_gid}, expected {gid}")
        if not entry.by_server and st.st_uid != owner_uid:
            problems.append(f"{path} is owned by uid {st.st_uid}, expected the owner {owner_uid}")
    return problems
