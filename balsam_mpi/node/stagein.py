"""A child's ``input_files``: glob patterns linked from its parents' working directories.

As in Balsam, before a task runs, every file in a parent's directory that matches one of
the child's patterns is symlinked into the child's directory under the same name. Pure
filesystem work, no database: the caller passes the directories of the task's parents
(``Project.task_dir`` of each; Client.get / the ``tasks_parents`` query give their
workflow, id and name).

Every directory involved lies in the group-writable ``data/``, so the work is done the way
``safefs`` does it: the child's and each parent's directory are walked from ``data/``
without following links (a planted symlinked parent directory is skipped), each pattern
is matched one component at a time in directory descriptors, and a match is linked only if
it is a regular file or a directory owned by someone trusted. A match that is itself a
symlink — the parent's own stage-in link — is linked only when its target is a path inside
``data/`` that the same walk accepts; a link pointing anywhere else (``~owner/.ssh``…) is
never passed on. The link is made in the child's directory descriptor (``symlinkat``),
never replacing a name that exists: the first parent listed wins, and nothing the task
wrote is overwritten.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..base import safefs
from ..base.values import check_pattern

log = logging.getLogger(__name__)


def link_inputs(task_dir: Path, parent_dirs: Iterable[Path], patterns: Sequence[str],
                data_dir: Path | None = None) -> list[Path]:
    """Symlink matching files of each parent directory into ``task_dir``; returns the links
    made. ``data_dir``: the project's ``data/`` (default: three levels above ``task_dir``,
    as ``Project.task_dir`` lays them out). Raises ``safefs.UnsafePath`` if the child's own
    directory cannot be used; parents that cannot are skipped with a warning."""
    for pattern in patterns:
        check_pattern(pattern)
    made: list[Path] = []
    if not patterns:
        return made
    data = str(data_dir) if data_dir is not None else str(task_dir.parents[2])
    root = safefs.root(data)
    child_fd = root.open_dir(_parts(task_dir, data))
    try:
        for parent in parent_dirs:
            try:
                pfd = root.open_dir(_parts(parent, data), create=False)
            except safefs.UnsafePath as exc:
                log.warning("input_files: skipping parent %s: %s", parent, exc)
                continue
            try:
                for pattern in patterns:
                    for name, target in _matches(root, pfd, str(parent), pattern):
                        try:
                            os.symlink(target, name, dir_fd=child_fd)
                        except FileExistsError:
                            continue  # an earlier parent's, or the task's own file
                        made.append(task_dir / name)
            finally:
                os.close(pfd)
    finally:
        os.close(child_fd)
    return made


def _parts(path: Path, data: str) -> tuple[str, ...]:
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(data))
    parts = tuple(rel.split(os.sep))
    if rel.startswith("..") or os.path.isabs(rel) or not parts or parts == (".",):
        raise safefs.UnsafePath(f"refusing {path}: not inside {data}")
    return parts


def _matches(root: safefs.Root, dir_fd: int, where: str, pattern: str
             ) -> Iterator[tuple[str, str]]:
    """(link name, link target) for each accepted match of ``pattern`` below ``dir_fd``."""
    head, _, rest = pattern.partition("/")
    try:
        entries = sorted(os.scandir(dir_fd), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not fnmatch.fnmatchcase(entry.name, head):
            continue
        path = f"{where}/{entry.name}"
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if rest:  # a directory level of the pattern: enter it without following
            if not stat.S_ISDIR(st.st_mode) or not root.trust.allows(st.st_uid):
                continue
            try:
                sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                              | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                yield from _matches(root, sub, path, rest)
            finally:
                os.close(sub)
            continue
        target = _accepted(root, dir_fd, entry.name, st, path)
        if target is not None:
            yield entry.name, target


def _accepted(root: safefs.Root, dir_fd: int, name: str, st: os.stat_result, path: str
              ) -> str | None:
    """The link target for a match, or None (with a warning) when it must not be passed on."""
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=dir_fd)
        if not _inside_data(root, target):
            log.warning("input_files: not linking %s: it points outside the project's "
                        "data (%s)", path, target)
            return None
        return target
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        log.warning("input_files: not linking %s: it is %s", path, safefs.kind_of(st.st_mode))
        return None
    if not root.trust.allows(st.st_uid):
        log.warning("input_files: not linking %s: owned by uid %s, who may not write in "
                    "the project", path, st.st_uid)
        return None
    return path


def _inside_data(root: safefs.Root, target: str) -> bool:
    """A parent's own stage-in link: an absolute path into data/ whose every directory the
    walk accepts, ending at a regular file or directory owned by someone trusted."""
    data = os.path.normpath(root.path)
    norm = os.path.normpath(target)
    if not os.path.isabs(target) or norm != target.rstrip("/") or not norm.startswith(
            data + os.sep):
        return False
    parts = norm[len(data) + 1:].split(os.sep)
    try:
        fd = root.open_dir(parts[:-1], create=False) if len(parts) > 1 else os.dup(root.fd)
    except safefs.UnsafePath:
        return False
    try:
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except OSError:
        return False
    finally:
        os.close(fd)
    return (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) and root.trust.allows(
        st.st_uid)
