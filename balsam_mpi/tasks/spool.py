"""Tasks from an iterator, spooled so that a bulk add reads them twice in bounded memory:
the source ``Client.add_tasks`` gives ``streamed.add_streamed`` for a generator.

``TaskWriter.add`` takes a batch as a list, so a generator of a million tasks became a
list of a million dicts, all held until the add ended. A list the caller built is in
memory anyway; an iterator's tasks are not, and need not be. ``Client.add_tasks`` takes
up to ``SPOOL_AFTER`` tasks of an iterator as before; past that, the first pass reads the
iterator once, and each task it checks is pickled, as checked, into an unnamed temporary
file (``keep``); the second pass (the write) reads them back from there and does not
check them again: no one else can reach the file, so they are what was checked. The
rows, ids, events and errors are those of the list path (the ``streamed`` writer also
serves ``task add --from-file``), and the database checks every row again anyway.

Pickle, not JSON: a checked task comes back exactly as it was (no second encoding or
parse), at ~2 µs a task where checking one costs ~7 µs. Only what this process wrote
into its own unlinked file is ever unpickled.
"""

from __future__ import annotations

import pickle
import struct
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from ..base.errors import BalsamError, InputError
from .plan import at, default_label

SPOOL_AFTER = 25_000  # an iterator of more tasks than this is spooled, not listed
_LENGTH = struct.Struct("=I")  # before each pickled task in the spool


class _Unkept:
    """In the spool, in place of a task pickle could not write."""

    def __init__(self, why: str) -> None:
        self.why = why


class SpooledTasks:
    """The tasks of an iterator, read from it once (the first pass); the second pass
    reads them back from the spool as the first pass checked them (``keep``). Lines are
    positions from 1, as a file's lines are."""

    def __init__(self, tasks: Iterable[Mapping[str, Any]],
                 labels: Sequence[str] | None = None) -> None:
        self._source: Iterator[Mapping[str, Any]] | None = iter(tasks)
        self._labels = labels
        self._spool: IO[bytes] = tempfile.TemporaryFile(prefix="balsam-mpi-add-")
        self._kept = 0

    def label(self, line: int) -> str:
        if self._labels is not None and 0 < line <= len(self._labels):
            return self._labels[line - 1]
        return default_label(line - 1)

    def records(self) -> Iterator[tuple[int, Mapping[str, Any]]]:
        if self._source is not None:
            source, self._source = self._source, None
            return enumerate(source, 1)
        return self._again()

    def keep(self, task: dict[str, Any]) -> None:
        """The next task as the first pass checked it."""
        try:
            data = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # checked tasks hold plain values; never seen here
            data = pickle.dumps(_Unkept(f"{type(exc).__name__}: {exc}"))
        try:
            self._spool.write(_LENGTH.pack(len(data)) + data)
        except OSError as exc:  # $TMPDIR full: before the write's transaction began
            raise BalsamError(f"could not keep the tasks for the write in $TMPDIR "
                              f"({tempfile.gettempdir()}: {exc.strerror or exc}); nothing was "
                              "added: point TMPDIR at a file system with room, or add "
                              "the tasks in smaller batches") from exc
        self._kept += 1

    def _again(self) -> Iterator[tuple[int, Mapping[str, Any]]]:
        """Each task's bytes read through the file's buffer, then unpickled: a
        ``pickle.load`` from the file itself took 10 µs a task, ``loads`` of its bytes
        1.2 µs."""
        self._spool.flush()
        self._spool.seek(0)
        read = self._spool.read
        for line in range(1, self._kept + 1):
            (n,) = _LENGTH.unpack(read(_LENGTH.size))
            task = pickle.loads(read(n))
            if isinstance(task, _Unkept):
                raise InputError(at(self.label(line)) + "a value of this task cannot be kept "
                                 f"for the write ({task.why}); give tasks as JSON-like "
                                 "values, or as a list")
            yield line, task

    def check_unchanged(self) -> None:
        """Nothing to check: the spool is this process's own, unlinked."""

    def close(self) -> None:
        self._spool.close()


def head(tasks: Iterable[Mapping[str, Any]]
         ) -> tuple[Iterable[Mapping[str, Any]], Iterable[Mapping[str, Any]] | None]:
    """(the tasks, None) for a sequence (taken as it is) or an iterator of at most
    ``SPOOL_AFTER`` tasks (listed), else ((), an iterable of all of them) for the spool."""
    if isinstance(tasks, Sequence):
        return tasks, None
    it = iter(tasks)
    first: deque[Mapping[str, Any]] = deque()
    for task in it:
        first.append(task)
        if len(first) > SPOOL_AFTER:
            return (), _drained(first, it)
    return list(first), None


def _drained(first: deque[Mapping[str, Any]], rest: Iterator[Mapping[str, Any]]
             ) -> Iterator[Mapping[str, Any]]:
    """The tasks taken ahead, each let go as it is handed on, then the rest."""
    while first:
        yield first.popleft()
    yield from rest
