"""Removing task working directories under ``PROJECT/data/`` without ever leaving it.

``data/`` is group-writable: any member may have planted a symlink, a FIFO, a mount or a
deep tree where a task's directory should be, hoping that the owner's ``prune`` follows it
into their home. So nothing here resolves a path: the walk holds a directory file
descriptor for every level, opens each child with ``O_NOFOLLOW | O_DIRECTORY`` relative to
its parent, deletes with ``unlinkat``, never crosses to another file system, and checks
after opening that it holds what it inspected (no swap between lstat and open). A symlink
is removed as a link (its target is never touched); anything it cannot remove is reported,
not guessed at.

This is the prune's own small walk; ``balsam_mpi/base/safefs.py`` (the project's general
fd-based file helpers) may take it over.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 128  # a deeper tree is refused (each level holds one descriptor)


@dataclass
class Removal:
    """What a removal (or, with ``dry_run``, a count) found."""

    dirs: int = 0
    files: int = 0  # regular files, symlinks and anything else that is not a directory
    bytes: int = 0
    missing: int = 0  # task directories that did not exist (never ran, or already gone)
    errors: list[str] = field(default_factory=list)

    def add(self, other: Removal) -> None:
        self.dirs += other.dirs
        self.files += other.files
        self.bytes += other.bytes
        self.missing += other.missing
        self.errors.extend(other.errors)


class DataDir:
    """``PROJECT/data`` opened once; task directories removed relative to it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, _DIR_FLAGS)
        self.dev = os.fstat(self.fd).st_dev
        self._open: dict[tuple[str, ...], int] = {(): self.fd}
        self._bad: set[tuple[str, ...]] = set()

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def __enter__(self) -> DataDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dir(self, parts: tuple[str, ...], out: Removal) -> int | None:
        """An open descriptor of data/<parts...> (cached), or None (reported) if it is not
        a plain directory of this file system."""
        if parts in self._open:
            return self._open[parts]
        if parts in self._bad:  # reported once
            return None
        parent = self._dir(parts[:-1], out)
        if parent is None:
            return None
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._bad.add(parts)
            out.errors.append(f"{self._show(parts)}: {_why(exc)}")
            return None
        if os.fstat(fd).st_dev != self.dev:
            os.close(fd)
            self._bad.add(parts)
            out.errors.append(f"{self._show(parts)}: another file system is mounted here")
            return None
        self._open[parts] = fd
        return fd

    def remove(self, parts: tuple[str, ...], dry_run: bool = False) -> Removal:
        """Remove data/<parts...> (a task's directory) and everything in it."""
        out = Removal()
        parent = self._dir(parts[:-1], out)
        if parent is None:
            out.missing += not out.errors
            return out
        _remove_at(parent, parts[-1], self.dev, dry_run, out, self._show(parts))
        return out

    def prune_empty(self, parts: tuple[str, ...]) -> bool:
        """rmdir data/<parts...> if it is an empty directory (a shard or a workflow's)."""
        parent = self._open.get(parts[:-1])
        if parent is None or not parts:
            return False
        try:
            os.rmdir(parts[-1], dir_fd=parent)
        except OSError:
            return False
        fd = self._open.pop(parts, None)
        if fd is not None:
            os.close(fd)
        return True

    def _show(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.path, *parts)


def _remove_at(parent: int, name: str, dev: int, dry_run: bool, out: Removal,
               shown: str) -> None:
    """Depth-first, iterative: one (descriptor, entries) frame per directory level."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        out.missing += 1
        return
    if not stat.S_ISDIR(st.st_mode):  # planted where a directory should be: the entry goes
        _unlink(parent, name, st, dry_run, out, shown)
        return
    root = _open_same(parent, name, st, dev, out, shown)
    if root is None:
        return
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]], int, str]] = [
        (root, name, iter(_entries(root)), parent, shown)]
    while stack:
        fd, dname, entries, pfd, dshown = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            os.close(fd)
            if not dry_run:
                try:
                    os.rmdir(dname, dir_fd=pfd)
                except OSError as exc:
                    out.errors.append(f"{dshown}: {_why(exc)}")
                    continue
            out.dirs += 1
            continue
        child = os.path.join(dshown, entry.name)
        try:
            cst = entry.stat(follow_symlinks=False)
        except OSError as exc:
            out.errors.append(f"{child}: {_why(exc)}")
            continue
        if not stat.S_ISDIR(cst.st_mode):
            _unlink(fd, entry.name, cst, dry_run, out, child)
        elif len(stack) >= MAX_DEPTH:
            out.errors.append(f"{child}: deeper than {MAX_DEPTH} levels; remove it by hand")
        else:
            cfd = _open_same(fd, entry.name, cst, dev, out, child)
            if cfd is not None:
                stack.append((cfd, entry.name, iter(_entries(cfd)), fd, child))


def _open_same(parent: int, name: str, st: os.stat_result, dev: int, out: Removal,
               shown: str) -> int | None:
    """Open a directory we have just lstat'ed, and make sure it is still that one."""
    if st.st_dev != dev:
        out.errors.append(f"{shown}: another file system is mounted here")
        return None
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        out.errors.append(f"{shown}: {_why(exc)}")
        return None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        out.errors.append(f"{shown}: replaced while it was being removed")
        return None
    return fd


def _entries(fd: int) -> list[os.DirEntry[str]]:
    # Listed whole before anything in it is removed: deleting while scandir iterates the
    # same directory may skip entries.
    with os.scandir(fd) as it:
        return list(it)


def _unlink(parent: int, name: str, st: os.stat_result, dry_run: bool, out: Removal,
            shown: str) -> None:
    if not dry_run:
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            out.errors.append(f"{shown}: {_why(exc)}")
            return
    out.files += 1
    if stat.S_ISREG(st.st_mode):
        out.bytes += st.st_size


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "not a directory (a symlink or a file): left alone"
    return exc.strerror or str(exc)
