"""A file of tasks read twice, never held: the source of a streamed bulk add.

``task add --from-file`` checks the whole file before writing (one bad line anywhere
refuses all of it), then writes it chunk by chunk; holding a million parsed tasks for that
took 1.5 GB. A ``TaskFile`` instead reads the file once to check it and once to write it,
from the same open descriptor (``-``, stdin, is first copied to an unnamed temporary file,
so it too can be read twice). Each pass hashes the bytes it reads; the writer compares the
two digests before its transaction commits, so a file changed between the passes (by
anyone who may write it) is refused with nothing added, never half-checked.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO, Any, cast

from ..base.errors import InputError
from ..base.values import show
from . import files

_SPOOL_BLOCK = 1 << 20


class TaskFile:
    """Tasks of one open file (binary, seekable), with the command line's defaults."""

    def __init__(self, stream: IO[bytes], source: str, fmt: str | None,
                 defaults: Mapping[str, Any]) -> None:
        self.stream = stream
        self.source = source
        self.fmt = fmt
        self.defaults = dict(defaults)
        self.digests: list[bytes] = []
        files.read_numbered([], source, fmt)  # an unknown format fails now

    def label(self, line: int) -> str:
        return f"{self.source} line {line}"

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """One pass over the file: (line number, task with the defaults filled in). Its
        digest is recorded when the pass reaches the end."""
        self.stream.seek(0)
        reader = _Hashing(self.stream)
        for n, task in files.read_numbered(cast(IO[bytes], reader), self.source, self.fmt):
            yield n, files.with_defaults(task, self.defaults)
        self.digests.append(reader.digest())

    def check_unchanged(self) -> None:
        """Refuse (nothing written: the writer's transaction is still open) a file whose
        second pass did not read what the first one checked."""
        if len(self.digests) < 2 or any(d != self.digests[0] for d in self.digests[1:]):
            raise InputError(f"--from-file: {show(self.source)} changed while it was being "
                             "read; nothing was added (write the file first, then add it)")

    def close(self) -> None:
        self.stream.close()


def for_one_request(tasks_file: TaskFile, cap: int) -> list[dict[str, Any]]:
    """A file's tasks for one request through the launcher (inside a task, which has no
    database connection): checked line by line first, as far as the database is not
    needed (``validate.check_shape``), and sized, so that a bad line is refused by its
    number and a file past ``cap`` bytes of request in one line, both before anything is
    sent or held; then read again, whole (at most ``cap`` bytes of JSON)."""
    from .plan import at
    from .validate import check_shape

    size = 64  # at least the request's envelope: {"parent": id, "tasks": [...]}\n
    for line, task in tasks_file.records():
        try:
            check_shape(task)
        except InputError as exc:
            raise InputError(at(tasks_file.label(line)) + str(exc)) from None
        size += len(json.dumps(task, default=str).encode()) + 2
        if size > cap:
            raise InputError(
                f"--from-file: {show(tasks_file.source)} is more than one request through "
                f"the launcher may carry ({cap} bytes of tasks; inside a task, adds go "
                "through it); add it from outside the task, or in smaller files")
    tasks = [task for _, task in tasks_file.records()]
    tasks_file.check_unchanged()
    return tasks


def open_task_file(path: str, fmt: str | None, defaults: Mapping[str, Any]) -> TaskFile:
    """The file at ``path`` (``-``: stdin, spooled to an unnamed temporary file)."""
    from ..base.values import text

    text("--from-file", path, 4096, empty=False)
    if path == "-":
        spool = tempfile.TemporaryFile()  # closed by TaskFile.close
        shutil.copyfileobj(sys.stdin.buffer, spool, _SPOOL_BLOCK)
        return TaskFile(spool, "stdin", fmt, defaults)
    try:
        stream = open(path, "rb")  # closed by TaskFile.close
    except OSError as exc:
        raise InputError(f"--from-file: cannot open {show(path)} ({exc.strerror})") from exc
    try:
        return TaskFile(stream, path, fmt, defaults)
    except BaseException:
        stream.close()
        raise


class _Hashing:
    """A binary stream's ``readline``, hashing every byte it returns."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._readline = stream.readline
        self._hash = hashlib.blake2b(digest_size=32)

    def readline(self, size: int = -1) -> bytes:
        line = self._readline(size)
        self._hash.update(line)
        return line

    def digest(self) -> bytes:
        return self._hash.digest()
