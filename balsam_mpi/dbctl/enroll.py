"""Enrollment without sending a secret anywhere (docs/architecture.md §6).

The collaborator's side (``request-access``) keeps a random password in their own
``~/.pgpass`` and hands over only its SCRAM-SHA-256 verifier (both in ``credentials.py``), either straight to the server
over the socket (peer; on the server's host, once their role exists) or as a request file
``access/USER.json`` that the owner's ``add-user`` checks and applies. A verifier lets the
server check a password; it does not let anyone log in. Neither the password nor the
verifier is ever logged or printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import ProjectError, UsageError
from ..base.project import Project
from .credentials import is_well_formed_verifier

MAX_REQUEST_BYTES = 4096
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")


def check_role_name(name: str) -> str:
    """A name usable as a role and a request file name (no paths, no quoting games)."""
    if not _ROLE_NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a usable user name (letters, digits, _ . -; "
                         "at most 63 characters, not starting with a digit or dot)")
    return name


# -- request files ----------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    user: str
    verifier: str
    host: str
    requested_at: float
    file_id: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file it was read from


def request_name(user: str) -> str:
    return f"{check_role_name(user)}.json"


def _open_access_dir(project: Project) -> int:
    try:
        return os.open(project.access_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ProjectError(f"cannot open {project.access_dir} ({exc.strerror}); the owner "
                           "should run `balsam-dbctl fix-perms`") from exc


def write_request(project: Project, user: str, verifier: str, host: str) -> Path:
    """Create access/USER.json (0640, O_EXCL, never through a symlink).

    A stale request of our own is replaced; one owned by anyone else is left alone and
    reported (the sticky directory stops us from removing it anyway).
    """
    name = request_name(user)
    body = json.dumps({"user": user, "verifier": verifier, "host": host,
                       "requested_at": time.time()}) + "\n"
    dfd = _open_access_dir(project)
    try:
        for attempt in (1, 2):
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640,
                             dir_fd=dfd)
            except FileExistsError:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if st.st_uid != os.geteuid() or attempt == 2:
                    raise ProjectError(
                        f"{project.access_dir / name} already exists and belongs to uid "
                        f"{st.st_uid}, not you: ask the project owner to run "
                        f"`balsam-dbctl add-user {user}`, which removes it"
                    ) from None
                os.unlink(name, dir_fd=dfd)
                continue
            with os.fdopen(fd, "w") as fh:
                os.fchmod(fh.fileno(), 0o640)  # exact, whatever the umask
                fh.write(body)
            return project.access_dir / name
    finally:
        os.close(dfd)
    raise AssertionError("unreachable")


def remove_own_request(project: Project, user: str) -> None:
    with contextlib.suppress(OSError):
        dfd = _open_access_dir(project)
        try:
            st = os.stat(request_name(user), dir_fd=dfd, follow_symlinks=False)
            if st.st_uid == os.geteuid():
                os.unlink(request_name(user), dir_fd=dfd)
        finally:
            os.close(dfd)


def read_request(project: Project, user: str, uid: int) -> Request | None:
    """The owner's side: the request of ``user`` (uid ``uid``), checked, or None if none.

    Opened with O_NOFOLLOW (a symlink is refused, not followed) and O_NONBLOCK (a FIFO
    cannot hang us); then fstat on the open file: a regular file with one link, owned by
    that user's uid, not writable by group or others, holding a well-formed verifier.
    """
    name = request_name(user)
    path = project.access_dir / name
    dfd = _open_access_dir(project)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if os.path.islink(path):
                raise ProjectError(f"refusing {path}: it is a symlink; remove it and ask "
                                   f"{user} to run `balsam-dbctl request-access` again") from exc
            raise ProjectError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            _check_request_stat(path, st, user, uid)
            raw = os.read(fd, MAX_REQUEST_BYTES + 1)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    request = _parse_request(path, raw, user)
    return Request(request.user, request.verifier, request.host, request.requested_at,
                   (st.st_dev, st.st_ino))


def _check_request_stat(path: Path, st: os.stat_result, user: str, uid: int) -> None:
    again = f"remove it and ask {user} to run `balsam-dbctl request-access` again"
    if not stat.S_ISREG(st.st_mode):
        raise ProjectError(f"refusing {path}: it is not a regular file; {again}")
    if st.st_nlink != 1:
        raise ProjectError(f"refusing {path}: it has {st.st_nlink} hard links; {again}")
    if st.st_uid != uid:
        raise ProjectError(f"refusing {path}: it belongs to uid {st.st_uid}, not {user} "
                           f"(uid {uid}); {again}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ProjectError(f"refusing {path}: others could have written it (mode "
                           f"{stat.S_IMODE(st.st_mode):04o}); {again}")


def _parse_request(path: Path, raw: bytes, user: str) -> Request:
    again = f"remove it and ask {user} to run `balsam-dbctl request-access` again"
    if len(raw) > MAX_REQUEST_BYTES:
        raise ProjectError(f"refusing {path}: it is too large to be a request; {again}")
    try:
        data = json.loads(raw.decode("utf-8"))
        verifier = str(data["verifier"])
        named = str(data["user"])
        host = str(data.get("host", ""))
        at = float(data.get("requested_at", 0.0))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ProjectError(f"refusing {path}: it is not a request file; {again}") from None
    if named != user:
        raise ProjectError(f"refusing {path}: it asks for {named!r}, not {user!r}; {again}")
    if not is_well_formed_verifier(verifier):
        raise ProjectError(f"refusing {path}: it does not hold a SCRAM-SHA-256 verifier; "
                           f"{again}")
    return Request(user=named, verifier=verifier, host=host, requested_at=at)


def unlink_request(project: Project, user: str,
                   file_id: tuple[int, int] | None = None) -> None:
    """The owner removes a request once applied (or when revoking the user); with
    ``file_id``, only if it is still the file that was read (not a newer request)."""
    with contextlib.suppress(FileNotFoundError):
        dfd = _open_access_dir(project)
        try:
            st = os.stat(request_name(user), dir_fd=dfd, follow_symlinks=False)
            if file_id is None or (st.st_dev, st.st_ino) == file_id:
                os.unlink(request_name(user), dir_fd=dfd)
        finally:
            os.close(dfd)


def clear_squat(project: Project, user: str, uid: int) -> str | None:
    """The owner's side: if access/USER.json exists but is not USER's (another uid made
    it, whatever it is: file, symlink, FIFO, directory), remove it and return a line
    saying who planted it. Such a file blocked USER's own request (O_EXCL), which the
    sticky directory does not let USER remove."""
    name = request_name(user)
    path = project.access_dir / name
    dfd = _open_access_dir(project)
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if st.st_uid == uid:
            return None
        who = _account_name(st.st_uid)
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)  # never follows a symlink
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProjectError(f"{path} was planted by {who}, not {user}, and cannot be "
                               f"removed ({exc.strerror}); remove it by hand") from exc
    finally:
        os.close(dfd)
    return (f"removed {path}: it was made by {who}, not {user} (a request under another "
            f"user's name blocks theirs); {user} can request access again")


def _account_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def request_uids(project: Project) -> dict[str, int]:
    """User names with a request file waiting, and the uid that made each (lstat: a
    symlink counts as its maker's; nothing is opened)."""
    found: dict[str, int] = {}
    for name in pending_requests(project):
        try:
            found[name] = os.lstat(project.access_dir / request_name(name)).st_uid
        except (OSError, UsageError):
            continue
    return found


def pending_requests(project: Project) -> list[str]:
    """User names with a request file waiting (names only; nothing is read)."""
    try:
        names = sorted(p.name for p in project.access_dir.iterdir())
    except OSError:
        return []
    return [n[:-5] for n in names if n.endswith(".json") and _ROLE_NAME.fullmatch(n[:-5])]
