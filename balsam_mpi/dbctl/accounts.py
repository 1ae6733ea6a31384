"""UNIX accounts: who is calling, which account runs Postgres, and what it can reach.

Postgres refuses to run as root, so a root-owned project runs its server under an
unprivileged account (docs/architecture.md §3). Everything here uses argv lists, never a shell.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import PermissionDenied, ProjectError, UsageError

DEFAULT_SERVER_USER = "balsam"


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]
    home: str

    @classmethod
    def from_pw(cls, pw: pwd.struct_passwd) -> Account:
        gids = {pw.pw_gid}
        gids.update(g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem)
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, frozenset(gids), pw.pw_dir)

    @classmethod
    def by_name(cls, name: str) -> Account:
        try:
            return cls.from_pw(pwd.getpwnam(name))
        except KeyError:
            raise UsageError(f"there is no UNIX account named {name!r}") from None

    @classmethod
    def by_uid(cls, uid: int) -> Account:
        try:
            return cls.from_pw(pwd.getpwuid(uid))
        except KeyError:
            raise ProjectError(f"uid {uid} has no account name on this host") from None

    @classmethod
    def current(cls) -> Account:
        account = cls.by_uid(os.geteuid())
        # The live process may have groups the group database does not list yet.
        live = frozenset(os.getgroups()) | {os.getegid()}
        return Account(account.name, account.uid, account.gid, account.groups | live, account.home)

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def uid_of(name: str) -> int | None:
    """The uid of a UNIX account, or None when this host has no account by that name."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def group_gid(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UsageError(
            f"there is no UNIX group named {name!r}: pick an existing group with --group "
            "(`id -Gn` lists yours)"
        ) from None


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def ensure_server_account(name: str, gid: int | None) -> tuple[Account, list[str]]:
    """As root: the unprivileged account that will run Postgres, created if missing.

    Returns the account and notices for the user (what was created or changed). The
    account joins the project group so it can traverse the project directory.
    """
    if os.geteuid() != 0:
        raise PermissionDenied("only root can create or change the server account")
    if name == "root":
        raise UsageError("--server-user cannot be root: Postgres refuses to run as root")
    notices: list[str] = []
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run_admin(["useradd", "--system", "--user-group", "--no-create-home",
                    "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name])
        notices.append(f"created the unprivileged account {name!r} to run the Postgres server")
    account = Account.by_name(name)
    if gid is not None and gid not in account.groups:
        _run_admin(["usermod", "--append", "--groups", group_name(gid), name])
        notices.append(f"added {name!r} to the project group {group_name(gid)!r}")
        account = Account.by_name(name)
    return account, notices


def _run_admin(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ProjectError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def can_access(st: os.stat_result, account: Account, bit: int) -> bool:
    """Would ``account`` have permission ``bit`` (4 r, 2 w, 1 x) on a file with ``st``?"""
    if account.is_root:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == account.uid:
        return bool(mode & (bit << 6))
    if st.st_gid in account.groups:
        return bool(mode & (bit << 3))
    return bool(mode & bit)


def first_unreachable(path: Path, account: Account) -> Path | None:
    """The first directory on the way to ``path``, ``path`` itself included, that
    ``account`` cannot traverse (callers name a directory the server must enter: the
    project's parent at init, the project at start)."""
    for depth in range(1, len(path.parts) + 1):  # "/", then each step down to path
        current = Path(*path.parts[:depth])
        try:
            st = current.stat()
        except FileNotFoundError:
            return None
        if not can_access(st, account, 1):
            return current
    return None


def check_reachable(path: Path, account: Account) -> None:
    blocked = first_unreachable(path, account)
    if blocked is not None:
        mode = stat.S_IMODE(blocked.stat().st_mode)
        raise ProjectError(
            f"the server account {account.name!r} cannot reach {path}: {blocked} has mode "
            f"{mode:04o}; choose a place under a directory others can traverse "
            f"(e.g. `chmod o+x {blocked}`, or a project under /tmp or /projects)"
        )


def run_as(
    argv: Sequence[str], account: Account, *, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run argv as ``account`` (dropping root when needed), capturing its output."""
    if os.geteuid() == 0 and account.uid != 0:
        kwargs.update(user=account.uid, group=account.gid, extra_groups=sorted(account.groups))
    elif os.geteuid() != account.uid:
        raise PermissionDenied(f"this must run as {account.name!r}")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    env.update(kwargs.pop("env", {}))
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, env=env, **kwargs
    )
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip().splitlines()
        tail = " | ".join(output[-3:]) if output else f"exit code {proc.returncode}"
        raise ProjectError(f"`{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''}` failed: {tail}")
    return proc


def owner_only(info_owner_uid: int, info_owner_name: str, action: str) -> None:
    """One line naming the owner for anyone else who tries an owner-only action."""
    if os.geteuid() != info_owner_uid:
        raise PermissionDenied(
            f"only the project owner, {info_owner_name}, can {action} the server; "
            f"ask {info_owner_name} (you are {Account.current().name})"
        )

