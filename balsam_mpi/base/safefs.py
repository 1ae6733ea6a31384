"""The project directory as an untrusted place: walk, create and append without following.

Everything under ``PROJECT/data`` may have been planted by someone in the project's group:
a symlink where a directory or ``task.err`` should be, a FIFO at ``task.out``, a hard link
to another user's file, a directory owned by a viewer. So a launcher never resolves a path
it did not check: it holds ``data/`` open (a real directory owned by the project owner, the
owner of the directory above it) and walks each component with
``openat(O_DIRECTORY|O_NOFOLLOW)``, refusing one that is not a real directory or whose
owner it does not trust; it creates files relative to the directory descriptor with
``O_CREAT|O_EXCL|O_NOFOLLOW`` and hands descriptors, never paths, to what comes next.

**Whom a component may belong to.** Members share task directories: a task retried by
another member's launcher finds its directory owned by the first one, and a workflow's
directory belongs to whoever's launcher ran its first task. So "owned by me" is too strict,
and "owned by anyone" lets a viewer plant a directory. The rule: root, the launcher's own
user, the project owner, and anyone else in the project's group who is not *barred* — a
uid with a named ACL entry without write on ``data/`` (read-only viewers and dropped users:
``balsam_mpi.base.acl``). A barred user cannot create anything in ``data/`` once the ACL
is set; this rule also refuses what they made before.

Every refusal is :class:`UnsafePath`: one line naming the path (relative to the project)
and what is wrong with it.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import acl
from .errors import ProjectError

log = logging.getLogger(__name__)

DIR_MODE = 0o2770  # group rwx whatever the umask; setgid keeps the project group
FILE_MODE = 0o660
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BARRED_TTL_S = 30.0  # how often a long-running launcher re-reads data/'s ACL


class UnsafePath(ProjectError):
    """A path in the project that the launcher or a command refuses to use."""


def kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


_in_group: dict[tuple[int, int], bool] = {}


def in_group(uid: int, gid: int) -> bool:
    """Is ``uid`` in group ``gid`` (primary or supplementary)? Cached: one lookup per uid."""
    key = (uid, gid)
    if key not in _in_group:
        try:
            pw = pwd.getpwuid(uid)
            _in_group[key] = gid in os.getgrouplist(pw.pw_name, pw.pw_gid)
        except (KeyError, OSError):
            _in_group[key] = False
    return _in_group[key]


@dataclass(frozen=True)
class Trust:
    """Whose directories and files the launcher enters and appends to (module docstring)."""

    me: int
    owner: int
    gid: int
    barred: frozenset[int] = frozenset()

    def allows(self, uid: int) -> bool:
        if uid in (0, self.me, self.owner):
            return True
        return uid not in self.barred and in_group(uid, self.gid)

    def check(self, st: os.stat_result, where: str) -> None:
        if not self.allows(st.st_uid):
            raise UnsafePath(
                f"refusing {where}: it is owned by {_who(st.st_uid)}, who may not write in "
                "the project (a viewer, a dropped user, or not in its group); the project "
                "owner can move it aside")


@dataclass
class Root:
    """A trusted directory (a project's ``data/``) held open; paths below it are walked from
    its descriptor, component by component."""

    fd: int
    path: str
    label: str  # how messages name it: "data"
    trust: Trust
    default_acl: bytes | None = None  # data/'s default ACL when it names anyone
    _read_at: float = 0.0
    _healed: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def open(cls, path: str) -> Root:
        """Open ``path`` (its parents may be symlinks: the user chose them) and check it:
        a real directory, owned by the owner of the directory that holds it."""
        parent, name = os.path.split(os.path.abspath(path))
        label = name or path
        try:
            pfd = os.open(parent or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UnsafePath(f"cannot open {parent}: {exc.strerror}") from None
        try:
            pst = os.fstat(pfd)
            fd = _open_dir_at(pfd, name, label)
        except FileNotFoundError:
            raise UnsafePath(f"{path} does not exist (the project owner can make it with "
                             "`balsam-dbctl fix-perms`)") from None
        finally:
            os.close(pfd)
        st = os.fstat(fd)
        if st.st_uid != pst.st_uid:
            os.close(fd)
            raise UnsafePath(f"refusing {path}: it is owned by {_who(st.st_uid)}, not by the "
                             f"owner of {parent} ({_who(pst.st_uid)})")
        root = cls(fd, path, label, Trust(os.geteuid(), st.st_uid, st.st_gid))
        root.refresh()
        return root

    def refresh(self, force: bool = True) -> None:
        """Re-read who is barred (named ACL entries of data/), at most every 30 s."""
        now = time.monotonic()
        if not force and now - self._read_at < _BARRED_TTL_S:
            return
        self._read_at = now
        entries = acl.read(self.fd)
        barred = acl.barred(entries)
        if barred != self.trust.barred:
            self.trust = Trust(self.trust.me, self.trust.owner, self.trust.gid, barred)
            self._healed.clear()
        default = acl.read(self.fd, acl.DEFAULT)
        named = default is not None and any(e.tag == acl.USER for e in default)
        self.default_acl = acl.encode(default) if named and default is not None else None

    def open_dir(self, parts: Sequence[str], create: bool = True) -> int:
        """The directory ``parts`` below the root, made (2770) where missing; every
        component a real directory owned by someone trusted. The caller closes the fd."""
        self.refresh(force=False)
        fd = self.fd
        where = self.label
        try:
            for name in parts:
                where = f"{where}/{name}"
                nfd = self.enter(fd, name, where, create)
                if fd != self.fd:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd != self.fd:
                os.close(fd)
            raise
        if fd == self.fd:
            return os.dup(fd)
        return fd

    def enter(self, fd: int, name: str, where: str, create: bool = True,
              new: bool = False) -> int:
        """One component below ``fd`` (``where`` names it), made where missing and checked
        as :meth:`open_dir` checks each; ``new``: most likely missing (a task's own
        directory), so make it first and spare a failed open."""
        if not name or name in (".", "..") or "/" in name:
            raise UnsafePath(f"refusing {where}: not a plain name")
        made = False
        try:
            if new and create:
                made = self._mkdir(fd, name, where)
            nfd = _open_dir_at(fd, name, where)
        except FileNotFoundError:
            if not create:
                raise UnsafePath(f"{where} does not exist") from None
            made = self._mkdir(fd, name, where)
            nfd = _open_dir_at(fd, name, where)
        try:
            st = os.fstat(nfd)
            self.trust.check(st, where)
            if st.st_uid == self.trust.me:
                if not made:
                    self._heal(nfd, st)
                elif stat.S_IMODE(st.st_mode) != DIR_MODE:
                    os.fchmod(nfd, DIR_MODE)  # mkdir's mode was cut by the umask
        except BaseException:
            os.close(nfd)
            raise
        return nfd

    @staticmethod
    def _mkdir(fd: int, name: str, where: str) -> bool:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=fd)
            return True
        except FileExistsError:
            return False  # made meanwhile by another launcher: checked like any other
        except OSError as exc:
            raise UnsafePath(f"cannot create {where}: {exc.strerror}") from None

    def _heal(self, fd: int, st: os.stat_result) -> None:
        """Give a directory of ours made before a viewer was barred data/'s default ACL,
        so the viewer cannot write in it either (only a directory's owner may)."""
        key = (st.st_dev, st.st_ino)
        if key in self._healed:
            return
        self._healed.add(key)
        try:
            current = os.getxattr(fd, acl.DEFAULT)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                return  # no ACLs here: nothing to heal
            current = None
        if self.default_acl is None:
            if current is None or not acl.barred(acl.decode(current)):
                return
            wanted = acl.with_barred(acl.decode(current), (), acl.barred(acl.decode(current)))
            blob = acl.encode(wanted)
        elif current == self.default_acl:
            return
        else:
            blob = self.default_acl
        try:
            os.setxattr(fd, acl.ACCESS, blob)
            os.setxattr(fd, acl.DEFAULT, blob)
            os.fchmod(fd, DIR_MODE)  # keep the setgid bit and the group's rwx mask
        except OSError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_dir_at(dir_fd: int, name: str, where: str) -> int:
    """One component: a real directory or UnsafePath (FileNotFoundError passes through)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                what = kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            except OSError:
                what = "not a directory"
            raise UnsafePath(f"refusing {where}: it is {what}, not a directory (planted?); "
                             "remove it") from None
        raise UnsafePath(f"cannot open {where}: {exc.strerror}") from None


_roots: dict[str, Root] = {}


def root(path: str) -> Root:
    """The open :class:`Root` for ``path``, opened once per process."""
    found = _roots.get(path)
    if found is None or found.fd < 0:
        found = _roots[path] = Root.open(path)
    return found


def split_task_dir(cwd: str) -> tuple[str, tuple[str, str, str]]:
    """``PROJECT/data/<workflow>/<shard>/<leaf>`` → (``PROJECT/data``, the three names)."""
    parts = os.path.normpath(cwd).rsplit("/", 3)
    if len(parts) == 4 and parts[0]:  # the usual case, in one split (once per task)
        return parts[0], (parts[1], parts[2], parts[3])
    shard_dir, leaf = os.path.split(os.path.normpath(cwd))
    wf_dir, shard = os.path.split(shard_dir)
    data, wf = os.path.split(wf_dir)
    return data, (wf, shard, leaf)


def create_new(dir_fd: int, name: str, mode: int, where: str, tries: int = 100
               ) -> tuple[int, str]:
    """A new file ``name`` in ``dir_fd``, or ``stem.N.ext`` when taken (a planted name, a
    link, or a real file: never followed, never reused); mode exact. Returns (fd, name)."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    for attempt in range(tries):
        candidate = name if attempt == 0 else (
            f"{stem}.{attempt}.{ext}" if ext else f"{stem}.{attempt}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise UnsafePath(f"cannot create {where}/{candidate}: {exc.strerror}") from None
        os.fchmod(fd, mode)
        return fd, candidate
    raise UnsafePath(f"cannot find a free name like {where}/{name} ({tries} taken)")


def create_dir(dir_fd: int, name: str, mode: int, where: str, tries: int = 100
               ) -> tuple[int, str]:
    """A new directory ``name`` in ``dir_fd`` (``name.N`` when taken: whatever holds the
    name is left alone), opened, checked to be this user's and given ``mode`` exactly
    (``mkdir``'s is cut by the umask). Returns (its descriptor, its name).

    A default ACL inherited from the parent (``qsubmit/``'s gives the group write on what
    is made inside, whatever the umask) is removed: what others make in this directory —
    a scheduler's output file — then gets the mode its creator's umask gives."""
    for attempt in range(tries):
        candidate = name if attempt == 0 else f"{name}.{attempt}"
        try:
            os.mkdir(candidate, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise UnsafePath(f"cannot create {where}/{candidate}: {exc.strerror}") from None
        try:
            fd = _open_dir_at(dir_fd, candidate, f"{where}/{candidate}")
        except FileNotFoundError:  # removed between mkdir and open (by the parent's owner)
            continue
        if os.fstat(fd).st_uid != os.geteuid():  # replaced between mkdir and open
            os.close(fd)
            continue
        os.fchmod(fd, mode)
        try:
            os.removexattr(fd, acl.DEFAULT)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                os.close(fd)
                raise UnsafePath(f"cannot drop the inherited default ACL of "
                                 f"{where}/{candidate}: {exc.strerror}") from None
        return fd, candidate
    raise UnsafePath(f"cannot find a free name like {where}/{name} ({tries} taken)")


def open_project_dir(project_root: str, name: str) -> int:
    """A directory the owner made in the project (``log``, ``qsubmit``): the project
    directory may be reached through symlinks the user chose; ``name`` itself must be a
    real directory owned by the project's owner."""
    try:
        pfd = os.open(project_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafePath(f"cannot open {project_root}: {exc.strerror}") from None
    try:
        owner = os.fstat(pfd).st_uid
        fd = _open_dir_at(pfd, name, os.path.join(project_root, name))
    finally:
        os.close(pfd)
    st = os.fstat(fd)
    if st.st_uid != owner:
        os.close(fd)
        raise UnsafePath(f"refusing {os.path.join(project_root, name)}: it is owned by "
                         f"{_who(st.st_uid)}, not the project owner; the owner should run "
                         "`balsam-dbctl fix-perms`")
    return fd
