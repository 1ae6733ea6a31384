"""Open MPI's session directories that killed jobs leave, and how they are removed safely.

Open MPI 4.1 (Debian 12's, measured) gives each ``mpirun`` a session directory,
``<tmp>/ompi.<host>.<uid>/pid.<mpirun's pid>/``, where ``<tmp>`` is
``OMPI_MCA_orte_tmpdir_base``, else ``TMPDIR``, else ``/tmp``. It holds PMIx's
shared-memory stores (two 4 MiB files, fully allocated: 8.2 MiB in all), hwloc's topology
and a FIFO. ``mpirun`` removes it at the job's end, also after SIGTERM or after its ranks
were killed; only an ``mpirun`` killed with SIGKILL (a task past its grace, a launcher or a
batch job killed outright) leaves it, and on a node whose ``/tmp`` is memory that is
memory. A later ``mpirun`` with the same pid reuses the directory and removes it at its end
(three killed jobs at one pid, then a clean one: it ran, and the leftovers went).

A directory ``pid.N`` is removed only when all of these hold, looked at in this order:

- ``ompi.<this host>.<uid>`` is a real directory of this user that nobody else may write
  (another host name is another container's, whose processes are out of sight), and
  ``pid.N`` a real directory of this user in it (links are never followed);
- nothing in the tree changed in the last ``min_age_s`` (a job being set up is spared);
- after that listing, no process ``N`` exists (a live ``mpirun`` or a new one at its pid);
- no process this user can see holds a file of the tree open or mapped (as in shmleft.py);
- the directory itself has not changed since it was listed (a new ``mpirun`` at pid ``N``
  writes into it) — then it is renamed, in one step, to ``.balsam-swept.pid.N.<our pid>``,
  so that an ``mpirun`` starting afterwards makes a fresh ``pid.N``, and the renamed tree
  is removed at leisure (a half-removed one by the next sweep).

Open MPI 4.1's shared-memory segments in ``/dev/shm`` (``vader_segment.*``) are plain
files and are swept with MPICH's (shmleft.py). A singleton's ``jf.N`` (an empty
directory) and Open MPI 5's ``prte.*`` directories are left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator

SWEPT = ".balsam-swept."  # what a tree is renamed to before it is removed
Holders = Callable[[str, str], set[str]]


def bases(env: dict[str, str] | None = None) -> list[str]:
    """Where Open MPI puts session directories for a task that inherits ``env``."""
    env = dict(os.environ) if env is None else env
    base = env.get("OMPI_MCA_orte_tmpdir_base") or env.get("TMPDIR") or "/tmp"
    return [base] if os.path.isabs(base) else []


def _tops(base: str, uid: int) -> Iterator[str]:
    """This host's and user's ``ompi.<host>.<uid>`` directories in ``base`` that only they
    may write. Another host's name is another machine's or container's, whose processes
    this one cannot see: never touched."""
    host = socket.gethostname()
    for name in {f"ompi.{host}.{uid}", f"ompi.{host.split('.')[0]}.{uid}"}:
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022:
            yield path


def _newest_change(path: str) -> float:
    """The latest mtime in the tree at ``path`` (links not followed); inf if unreadable."""
    newest = 0.0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    newest = max(newest, st.st_mtime)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            return float("inf")
    return newest


def candidates(top: str, uid: int, now: float, min_age_s: float
               ) -> list[tuple[str, os.stat_result]]:
    """``pid.N`` directories in ``top`` of this user, unchanged for ``min_age_s``, with
    their lstat; and trees an earlier sweep renamed but did not finish removing."""
    found = []
    try:
        names = os.listdir(top)
    except OSError:
        return []
    for name in names:
        if not ((name.startswith("pid.") and name[4:].isdigit()) or name.startswith(SWEPT)):
            continue
        path = os.path.join(top, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == uid):
            continue
        if name.startswith(SWEPT) or (now - max(st.st_mtime, _newest_change(path))
                                      >= min_age_s):
            found.append((name, st))
    return found


def _same(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_ino, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_ino, after.st_mtime_ns, after.st_ctime_ns)


def _detach(fd: int, name: str, listed: os.stat_result) -> str | None:
    """Rename ``pid.N`` out of Open MPI's way if it is as it was listed; its new name."""
    try:
        if not _same(listed, os.stat(name, dir_fd=fd, follow_symlinks=False)):
            return None  # written meanwhile: a new mpirun at that pid
        gone = f"{SWEPT}{name}.{os.getpid()}"
        os.rename(name, gone, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError:
        return None
    return gone


def sweep(session_bases: list[str], *, holders: Holders, min_age_s: float, proc: str = "/proc",
          uid: int | None = None) -> list[str]:
    """Remove the leftover session directories (see the module); the paths removed."""
    uid = os.getuid() if uid is None else uid
    now = time.time()
    removed = []
    for top in (t for base in session_bases for t in _tops(base, uid)):
        found = candidates(top, uid, now, min_age_s)
        if not found:
            continue
        # /proc names files by their resolved path: a base behind a link is looked up so.
        busy = {name.split("/", 1)[0] for name in holders(os.path.realpath(top), proc)}
        try:
            fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != uid:
                continue
            for name, listed in found:
                gone: str | None = name
                if not name.startswith(SWEPT):
                    if name in busy or os.path.exists(os.path.join(proc, name[4:])):
                        continue  # held, or its mpirun (or one at its pid) is alive
                    gone = _detach(fd, name, listed)
                if gone is not None:  # top is this user's alone, in a sticky directory
                    shutil.rmtree(os.path.join(top, gone), ignore_errors=True)
                    removed.append(os.path.join(top, name))
        finally:
            os.close(fd)
    return removed
