"""A task's directory and its output files, made the safe way at the cost of one task.

Every task a node starts needs ``data/<workflow>/<shard>/<leaf>`` and, in it, ``task.out``
and ``task.err``: walked and created as ``safefs`` walks anything in the project (each
component opened with ``O_DIRECTORY|O_NOFOLLOW`` from ``data/``, a real directory owned by
someone trusted; files ``O_CREAT|O_EXCL|O_NOFOLLOW``, a FIFO refused without blocking).
Thousands of tasks share a workflow's few shard directories, so walking them again for
each task was most of the walk: a node keeps the workflow and shard directories it
walked open (:class:`TaskDirs`) and, for the next task, checks with one ``fstatat`` each
(no link followed) that the name still holds the very directory it holds and that its
owner is still trusted; anything else — a directory moved, swapped for a link, the
barred users changed — and it walks afresh, with the walk's own refusals. Then only the
task's own directory is made (``mkdir`` first: it is usually new) and opened, and its two
files created in it: for a new task of a known shard, ten system calls (two ``fstatat``,
``mkdir``, ``open`` and ``fstat`` of the directory, two ``O_EXCL`` opens and, where the
umask cut the modes, three ``fchmod``) where the full walk took sixteen.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence

from . import safefs
from .safefs import FILE_MODE, Trust, UnsafePath, kind_of

log = logging.getLogger(__name__)

_OUT_FLAGS = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
KEEP_DIRS = 16  # workflow and shard directories held open per root
KEEP_ROOTS = 4  # roots whose directories are held (a node serves one project)


class TaskDirs:
    """A root's workflow and shard directories, held open between tasks (least recently
    used first); each is re-checked by name, from its parent, before it is used."""

    def __init__(self, root: safefs.Root, keep: int = KEEP_DIRS) -> None:
        self.root = root
        self.keep = max(4, keep)  # a walk's parent is never the one evicted
        self.trust = root.trust
        self.held: dict[tuple[str, ...], tuple[int, int, int]] = {}  # -> fd, dev, ino

    def parent(self, parts: Sequence[str]) -> int:
        """The directory ``parts`` below the root, made where missing; the descriptor is
        held here (the caller must not close it)."""
        root = self.root
        root.refresh(force=False)
        if root.trust is not self.trust:  # who is barred changed: every check again
            self.close()
            self.trust = root.trust
        fd, where = root.fd, root.label
        for i, name in enumerate(parts):
            key = tuple(parts[:i + 1])
            where = f"{where}/{name}"
            held = self.held.pop(key, None)
            if held is not None:
                if self._still(fd, name, held):
                    self.held[key] = held  # now the most recently used
                    fd = held[0]
                    continue
                os.close(held[0])
            nfd = root.enter(fd, name, where)
            st = os.fstat(nfd)
            self.held[key] = (nfd, st.st_dev, st.st_ino)
            fd = nfd
            while len(self.held) > self.keep:
                oldest = next(iter(self.held))
                os.close(self.held.pop(oldest)[0])
        return fd

    def _still(self, parent: int, name: str, held: tuple[int, int, int]) -> bool:
        """Whether ``name`` in ``parent`` is still the directory held, owned by someone
        trusted (never following a link: a link is not the directory)."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return False
        return ((st.st_dev, st.st_ino) == held[1:] and stat.S_ISDIR(st.st_mode)
                and self.trust.allows(st.st_uid))

    def close(self) -> None:
        for fd, _dev, _ino in self.held.values():
            os.close(fd)
        self.held.clear()


_dirs: dict[str, TaskDirs] = {}


def task_dirs(data: str) -> TaskDirs:
    """The :class:`TaskDirs` of the root at ``data`` (``safefs.root``'s, opened once)."""
    root = safefs.root(data)
    found = _dirs.pop(data, None)
    if found is not None and found.root is not root:
        found.close()
        found = None
    if found is None:
        found = TaskDirs(root)
        while len(_dirs) >= KEEP_ROOTS:
            _dirs.pop(next(iter(_dirs))).close()
    _dirs[data] = found
    return found


def open_task_dir(cwd: str, out_name: str, err_name: str) -> tuple[int, int, int]:
    """The task's directory ``PROJECT/data/<workflow>/<shard>/<leaf>`` (made where missing)
    and its two output files opened for appending, as descriptors the caller closes.
    UnsafePath (one line naming the path) if anything on the way was planted."""
    data, parts = safefs.split_task_dir(cwd)
    dirs = task_dirs(data)
    parent = dirs.parent(parts[:2])
    root = dirs.root
    where = "/".join((root.label, *parts))
    fds = [root.enter(parent, parts[2], where, new=True)]
    try:
        for name in (out_name, err_name):
            fds.append(open_output(fds[0], name, root.trust, f"{where}/{name}"))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1], fds[2]


def open_workflow_dir(cwd: str) -> int:
    """The workflow's directory of the task at ``cwd`` (``PROJECT/data/<workflow>``, made
    where missing, walked as for a task's own), as a descriptor the caller closes: where
    a Python call of an app without task directories runs."""
    data, parts = safefs.split_task_dir(cwd)
    return os.dup(task_dirs(data).parent(parts[:1]))


def open_output(dir_fd: int, name: str, trust: Trust, where: str,
                mode: int = FILE_MODE) -> int:
    """``name`` in ``dir_fd`` for appending: a new file (O_EXCL: never through a link), or
    an existing one that is a regular file with one link, owned by someone trusted (a
    retried task's earlier output; ``name.N.ext`` beside it if this user may not write
    it). Never blocks: a FIFO is refused, not opened for good. Read-write, so the tail is
    read back through the same descriptor."""
    for _attempt in range(3):
        try:
            fd = os.open(name, _OUT_FLAGS | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UnsafePath(f"cannot create {where}: {exc.strerror}") from None
        else:
            os.fchmod(fd, mode)  # the umask cut the mode given to open
            return fd
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed meanwhile: create it
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"refusing {where}: it is {kind_of(st.st_mode)} (planted?); "
                             "remove it, then retry the task")
        try:
            fd = os.open(name, _OUT_FLAGS | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except PermissionError:
            # An earlier run's output this user may not write (made by another member's
            # launcher without group write): the run goes on in a file of its own.
            return _fresh_output(dir_fd, name, mode, where)
        except OSError as exc:
            raise UnsafePath(f"cannot append to {where}: {exc.strerror}") from None
        try:
            check_appendable(os.fstat(fd), trust, where, (st.st_dev, st.st_ino))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise UnsafePath(f"cannot create {where}: it keeps changing (planted?)")


def _fresh_output(dir_fd: int, name: str, mode: int, where: str) -> int:
    stem, dot, ext = name.rpartition(".")
    for n in range(1, 100):
        candidate = f"{stem}.{n}.{ext}" if dot else f"{name}.{n}"
        try:
            fd = os.open(candidate, _OUT_FLAGS | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise UnsafePath(f"cannot create {where}: {exc.strerror}") from None
        os.fchmod(fd, mode)
        log.warning("%s is not writable by this user; this run's output goes to %s",
                    where, candidate)
        return fd
    raise UnsafePath(f"cannot append to {where}, nor find a free name beside it")


def check_appendable(st: os.stat_result, trust: Trust, where: str,
                     expected: tuple[int, int] | None = None) -> None:
    if expected is not None and (st.st_dev, st.st_ino) != expected:
        raise UnsafePath(f"refusing {where}: it was replaced while being opened (planted?)")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"refusing {where}: it is {kind_of(st.st_mode)} (planted?); "
                         "remove it, then retry the task")
    if st.st_nlink != 1:
        raise UnsafePath(f"refusing {where}: it has {st.st_nlink} hard links, so it is "
                         "also another file (planted?); remove it, then retry the task")
    trust.check(st, where)


def read_tail(fds: Sequence[int], limit: int) -> str:
    """The last ``limit`` bytes of the first non-empty file among ``fds`` (read through the
    descriptors: the names may have been swapped since)."""
    for fd in fds:
        if fd < 0:
            continue
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                continue
            raw = os.pread(fd, limit, max(0, size - limit))
        except OSError:
            continue
        return raw.decode("utf-8", "replace")
    return ""


FULL_NOTE = ("[balsam-mpi: the file system of the task's directory had no space left when "
             "the task ended: what it wrote last, such as its own error message, may be "
             "missing]")


def full_disk_note(fd: int) -> str:
    """FULL_NOTE when the file system holding ``fd`` has no block left for its user: a
    task that failed because its output could not be written (ENOSPC) could not write
    why either, and its record said no more than its exit code."""
    try:
        st = os.fstatvfs(fd)
    except OSError:
        return ""
    return FULL_NOTE if st.f_blocks > 0 and st.f_bavail == 0 else ""
