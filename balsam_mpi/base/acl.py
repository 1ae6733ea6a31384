"""POSIX ACLs on the project's shared directories: who in the group may not write.

A read-only viewer must be in the project's UNIX group (they need the socket and
``server-info.json``), and users on HPC systems cannot make groups of their own, so group
permissions cannot tell a viewer from a member. A named-user ACL entry can: ``u:VIEWER:r-x``
on ``data/``, ``log/``, ``qsubmit/`` (and ``access/`` once they are enrolled) is checked
before the group entry, so the viewer reads but cannot create, rename or delete anything
there, and the same entry in the *default* ACL is inherited by every directory and file
made inside afterwards. ``chmod`` (the runner's 2770, ``fix-perms``) only moves the ACL
mask, which a named ``r-x`` entry never exceeds.

The entries are also the record the launcher reads: a uid with a named entry lacking
``w`` on ``data/`` is *barred*, and any path component it owns is refused (``safefs``).

The kernel's xattr format (``linux/posix_acl_xattr.h``): a little-endian u32 version (2),
then ``(u16 tag, u16 perm, u32 id)`` entries sorted by tag, then id. ``os.setxattr`` is
all it takes; no ``acl`` package.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ProjectError

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF
R, W, X = 4, 2, 1
READ_ONLY = R | X  # what a barred user keeps on a directory (masked to r-- on files)
# The project's shared directories. access/ is handled apart: a viewer writes their own
# enrollment request there until they are enrolled.
SHARED = ("data", "log", "qsubmit")
ACCESS_DIR = "access"
_NO_SUPPORT = {errno.ENOTSUP, errno.EOPNOTSUPP}


@dataclass(frozen=True, order=True)
class Entry:
    tag: int
    id: int
    perm: int


def decode(blob: bytes) -> list[Entry]:
    if len(blob) < 4 or (len(blob) - 4) % 8:
        raise ValueError("not a POSIX ACL")
    (version,) = struct.unpack_from("<I", blob)
    if version != VERSION:
        raise ValueError(f"POSIX ACL version {version}")
    out = []
    for off in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, off)
        out.append(Entry(tag, ident, perm))
    return out


def encode(entries: Iterable[Entry]) -> bytes:
    return struct.pack("<I", VERSION) + b"".join(
        struct.pack("<HHI", e.tag, e.perm, e.id) for e in sorted(entries))


def from_mode(mode: int) -> list[Entry]:
    """The three entries a mode stands for (an object without an ACL)."""
    return [Entry(USER_OBJ, UNDEFINED, (mode >> 6) & 7),
            Entry(GROUP_OBJ, UNDEFINED, (mode >> 3) & 7),
            Entry(OTHER, UNDEFINED, mode & 7)]


def _get(target: int | str, name: str) -> bytes:
    if isinstance(target, int):
        return os.getxattr(target, name)
    return os.getxattr(target, name, follow_symlinks=False)


def read(target: int | str, name: str = ACCESS) -> list[Entry] | None:
    """The ACL ``name`` of an fd or path (not following a last symlink); None if unset."""
    try:
        return decode(_get(target, name))
    except OSError as exc:
        if exc.errno == errno.ENODATA or exc.errno in _NO_SUPPORT:
            return None
        raise


def supported(target: int | str) -> bool:
    """Whether the filesystem holding ``target`` keeps POSIX ACLs."""
    try:
        _get(target, ACCESS)
    except OSError as exc:
        return exc.errno not in _NO_SUPPORT
    return True


def barred(entries: Iterable[Entry] | None) -> frozenset[int]:
    """uids with a named entry that does not allow writing."""
    return frozenset(e.id for e in entries or () if e.tag == USER and not e.perm & W)


def with_barred(entries: list[Entry], bar: Iterable[int] = (),
                unbar: Iterable[int] = ()) -> list[Entry]:
    """``entries`` with ``u:UID:r-x`` for every uid in ``bar`` and no named entry for any
    uid in ``unbar``; the mask recomputed (the union of the group class, as setfacl does)
    so a named entry is never cut below what it grants."""
    bar, unbar = set(bar), set(unbar)
    kept = [e for e in entries if e.tag != MASK and not (e.tag == USER and e.id in bar | unbar)]
    kept += [Entry(USER, uid, READ_ONLY) for uid in bar]
    named = [e for e in kept if e.tag in (USER, GROUP)]
    if named:
        group_class = 0
        for e in kept:
            if e.tag in (USER, GROUP, GROUP_OBJ):
                group_class |= e.perm
        kept.append(Entry(MASK, UNDEFINED, group_class))
    return sorted(kept)


def set_barred(fd: int, bar: Iterable[int] = (), unbar: Iterable[int] = (),
               default: bool = True) -> bool:
    """Apply :func:`with_barred` to the access ACL of ``fd`` (and its default ACL, for a
    directory); True if anything changed."""
    st = os.fstat(fd)
    changed = False
    names = [ACCESS] + ([DEFAULT] if default and stat.S_ISDIR(st.st_mode) else [])
    for name in names:
        existing = read(fd, name)
        wanted = with_barred(existing or from_mode(stat.S_IMODE(st.st_mode)), bar, unbar)
        if existing is None and name == ACCESS and len(wanted) == 3:
            continue  # nothing named: the mode says it all
        if existing is None or sorted(existing) != wanted:
            os.setxattr(fd, name, encode(wanted))
            changed = True
    return changed


def _open_dir(root: Path, name: str) -> int | None:
    """A shared directory of the project, never through a symlink; None if missing."""
    try:
        rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ProjectError(f"cannot open {root}: {exc.strerror}") from exc
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=rfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProjectError(f"refusing {root / name}: {exc.strerror} (a symlink? run "
                           "`balsam-dbctl fix-perms`)") from exc
    finally:
        os.close(rfd)


@dataclass
class Outcome:
    changed: int = 0  # directories and files whose ACL changed
    foreign: int = 0  # directories in data/ owned by someone else (left to their launchers)

    def lines(self, what: str) -> list[str]:
        if not self.changed and not self.foreign:
            return []
        line = f"{what}: ACL updated on {self.changed} paths"
        if self.foreign:
            line += (f"; {self.foreign} directories in data/ belong to other members, whose "
                     "launchers update them as they pass, and refuse anything a barred "
                     "user owns meanwhile")
        return [line]


def apply(project_root: Path, bar: Iterable[int] = (), unbar: Iterable[int] = (),
          access: tuple[Iterable[int], Iterable[int]] | None = None) -> Outcome:
    """Bar (or unbar) uids on the shared directories and on everything in ``data/`` the
    caller owns; ``access`` = (bar, unbar) on ``access/``, or None to leave it. Walks with
    file descriptors and never follows a symlink."""
    bar, unbar = frozenset(bar), frozenset(unbar)
    out = Outcome()
    me = os.geteuid()
    for name in SHARED:
        fd = _open_dir(project_root, name)
        if fd is None:
            continue
        try:
            out.changed += set_barred(fd, bar, unbar)
            if name == "data":
                _apply_tree(fd, bar, unbar, me, out)
        finally:
            os.close(fd)
    if access is not None:
        fd = _open_dir(project_root, ACCESS_DIR)
        if fd is not None:
            try:
                out.changed += set_barred(fd, access[0], access[1], default=False)
            finally:
                os.close(fd)
    return out


def _apply_tree(data_fd: int, bar: frozenset[int], unbar: frozenset[int], me: int,
                out: Outcome) -> None:
    """Everything below data/ that the caller owns: directories (access and default ACL)
    and regular files (access ACL). Others' directories are counted, not entered for
    writing (only their owner, or root, may change their ACL)."""
    for _top, dirs, files, dfd in os.fwalk(".", dir_fd=data_fd, follow_symlinks=False):
        for name in dirs:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC, dir_fd=dfd)
            except OSError:
                continue
            try:
                if os.fstat(fd).st_uid == me or me == 0:
                    out.changed += set_barred(fd, bar, unbar)
                else:
                    out.foreign += 1
            finally:
                os.close(fd)
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode) and (st.st_uid == me or me == 0):
                        out.changed += set_barred(fd, bar, unbar, default=False)
                finally:
                    os.close(fd)


def barred_in(project_root: Path) -> frozenset[int]:
    """The uids barred on ``data/`` (the record of who may not write)."""
    fd = _open_dir(project_root, "data")
    if fd is None:
        return frozenset()
    try:
        return barred(read(fd))
    finally:
        os.close(fd)


def init_defaults(path: Path) -> bool:
    """At ``init``: a default ACL equal to the directory's mode, so what members create
    inside gets the group's rights whatever their umask, and named entries added later are
    inherited. False when the filesystem has no ACLs (nothing to do then)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not supported(fd):
            return False
        set_barred(fd)
        return True
    finally:
        os.close(fd)
