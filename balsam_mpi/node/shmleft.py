"""Shared-memory files that killed MPI jobs leave in ``/dev/shm``, and why they must go.

MPICH (5.0, the PyPI wheel's, measured) shares one memory segment among the ranks of a
host while ``MPI_Init`` runs, ``/dev/shm/mpich_shm_<hash>_<n>``, and the hash is of the
job's PMI name. Under ``mpiexec.gforker`` (which starts the launcher on one host, and the
tasks whose ranks are all on the rank's own host: ``mpilaunch.py``) that name is
``kvs_<mpiexec's pid>_0``, so two jobs whose mpiexec had the same pid use the same file
(hydra adds a random number and the host's name; srun uses Slurm's job and step ids).
Every rank tries to create it (``O_EXCL``); the one that succeeds sets it up, the others
open it and wait for that set-up. Only ``MPI_Finalize`` unlinks it, so a job whose ranks
are killed (SIGTERM or SIGKILL) leaves it behind: 1–4 MB of the node's memory each. Once
the pid comes round again, every rank of the new job finds the old file, none sets it up,
and ``MPI_Init`` fails with garbage ("failed to unpack address") or waits for ever
(reproduced here by choosing the pid: ``tests/e2e/test_shm_leftovers.py``; the
launcher's own ranks under ``mpiexec.gforker`` hung in ``MPI_Init`` this way in the test
suite).

Open MPI 4.1 (Debian 12's, measured) gives each rank a segment,
``/dev/shm/vader_segment.<host>.<uid>.<jobid>.<local rank>`` (4 MiB long, sparse: 72 KiB
of memory for a job that barely talked), and a job whose ``mpirun`` is killed with
SIGKILL leaves them (after SIGTERM, or when only its ranks are killed, ``mpirun`` removes
them). The job id comes from ``mpirun``'s pid; a later job at that pid creates the same
names without ``O_EXCL``, uses the files and removes them at its end, so these cost memory
only. Its session directories under ``/tmp`` are ``ompileft.py``'s.

A launcher kills tasks (wall time, ``task kill``, a job's end) and is itself killed, and a
node's pids come round (32,768 of them here), so this module removes such leftovers: files
of those names, regular, owned by this user, that no process of ours holds. It is called
before the local start execs the launcher's mpiexec (``batch/localstart.py``), when a node
starts, and a little after a task of that node ends badly (``Node``).

Why it is safe. The candidates are listed *before* the processes are read. A listed file
was created by a process that is in the later list unless it has died, and a process
holds the file from its creation (an open descriptor) through its mapping to its end
(descriptors are read before mappings, since a rank opens, maps, then closes). Removing a
name never disturbs ranks already attached (the memory stays until its last user unmaps
it); only ranks still to attach would notice, and their job's creator is alive and seen.
Files changed in the last ``min_age_s`` are spared besides, so that a holder this user
cannot see (a process in another PID namespace) has its job's start to itself. A job
started after the processes were read may adopt a leftover of its name (Open MPI's ranks
do, and a peer then opens it by name): adopting it changes the file (``ftruncate``), so a
file is removed only if it is still the one listed, unchanged. Another user's files are
never touched (the sticky ``/dev/shm`` forbids it anyway).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from . import ompileft

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
PREFIX = "mpich_shm_"  # MPICH's
PREFIXES = (PREFIX, "vader_segment.")  # and Open MPI 4's
MIN_AGE_S = 5.0  # a file younger than this is spared (made between the two looks)
AFTER_END_S = MIN_AGE_S + 1.0  # a node sweeps this long after a task ended badly
SWEEP_GAP_S = 30.0  # and not more often than this


def _listed(directory: str, uid: int, now: float, min_age_s: float) -> dict[str, os.stat_result]:
    """Names in ``directory`` that look like MPI jobs' segments: regular files (not links),
    owned by ``uid``, last changed at least ``min_age_s`` ago; with their lstat."""
    found = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    for name in names:
        if not name.startswith(PREFIXES):
            continue
        try:
            st = os.lstat(os.path.join(directory, name))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid and now - st.st_mtime >= min_age_s:
            found[name] = st
    return found


def candidates(directory: str = SHM_DIR, uid: int | None = None,
               now: float | None = None, min_age_s: float = MIN_AGE_S) -> list[str]:
    """The names ``sweep`` would remove if no process held them."""
    uid = os.getuid() if uid is None else uid
    return list(_listed(directory, uid, time.time() if now is None else now, min_age_s))


def _held_by(pid_dir: Path, directory: str) -> Iterable[str]:
    """Names in ``directory`` that one process has open, then those it has mapped."""
    prefix = directory.rstrip("/") + "/"
    try:
        for fd in os.listdir(pid_dir / "fd"):
            try:
                target = os.readlink(pid_dir / "fd" / fd)
            except OSError:
                continue
            if target.startswith(prefix):
                yield target[len(prefix):].removesuffix(" (deleted)")
    except OSError:
        pass
    try:
        with open(pid_dir / "maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                at = line.find(prefix)
                if at >= 0:
                    yield line[at + len(prefix):].rstrip("\n").removesuffix(" (deleted)")
    except OSError:
        pass


def held(directory: str = SHM_DIR, proc: str = "/proc") -> set[str]:
    """Names in ``directory`` that any process this user can look at holds open or mapped."""
    names: set[str] = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return names
    for pid in pids:
        names.update(_held_by(Path(proc) / pid, directory))
    return names


def sweep(directory: str = SHM_DIR, *, min_age_s: float = MIN_AGE_S, proc: str = "/proc",
          holders: Callable[[str, str], set[str]] = held) -> list[str]:
    """Remove the leftovers (see the module); the names removed. Never raises for a file
    that cannot be looked at or removed: that one stays."""
    found = _listed(directory, os.getuid(), time.time(), min_age_s)
    if not found:
        return []  # the usual case: one listdir
    busy = holders(directory, proc)
    removed = []
    for name, listed in found.items():
        if name in busy:
            continue
        path = os.path.join(directory, name)
        try:
            now = os.lstat(path)
            if (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) != (
                    listed.st_ino, listed.st_mtime_ns, listed.st_ctime_ns):
                continue  # adopted (or replaced) since it was listed
            os.unlink(path)
        except OSError:
            continue
        removed.append(name)
    if removed:
        log.info("removed %d shared-memory segment(s) that killed MPI jobs left in %s "
                 "(MPICH's stop a later job at the same pid in MPI_Init, Open MPI's hold "
                 "memory: node/shmleft.py)", len(removed), directory)
    return removed


def sweep_all(directory: str = SHM_DIR, session_bases: list[str] | None = None) -> list[str]:
    """The segments in ``directory`` and Open MPI's session directories; what went."""
    removed = sweep(directory)
    gone = ompileft.sweep(ompileft.bases() if session_bases is None else session_bases,
                          holders=held, min_age_s=MIN_AGE_S)
    if gone:
        log.info("removed %d Open MPI session director(y/ies) that killed jobs left: %s "
                 "(node/ompileft.py)", len(gone), ", ".join(gone[:5]))
    return removed + gone


class Sweeper:
    """When a node sweeps: once at its start, then ``AFTER_END_S`` after a task ends badly,
    at most every ``SWEEP_GAP_S``."""

    def __init__(self, directory: str = SHM_DIR, *, enabled: bool = True,
                 session_bases: list[str] | None = None) -> None:
        self.directory = directory
        self.session_bases = session_bases  # None: where Open MPI would put them
        self.enabled = enabled and os.path.isdir(directory)
        self.due = 0.0 if self.enabled else -1.0  # monotonic time of the next sweep; <0: none
        self._last = -SWEEP_GAP_S
        self._bad = -AFTER_END_S  # the last bad end

    def ended_badly(self, now: float) -> None:
        if self.enabled:
            self._bad = now
            if self.due < 0:
                self.due = max(now + AFTER_END_S, self._last + SWEEP_GAP_S)

    def tick(self, now: float) -> list[str]:
        if self.due < 0 or now < self.due:
            return []
        self._last = now
        self.due = -1.0
        if self._bad > now - AFTER_END_S:  # a task's ranks may still be dying: once more
            self.due = max(self._bad + AFTER_END_S, now + SWEEP_GAP_S)
        return sweep_all(self.directory, self.session_bases)
