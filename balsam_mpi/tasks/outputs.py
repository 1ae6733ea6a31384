"""A task's output files, read back for ``balsam-mpi task out`` (``Client.outputs``).

Every path under ``data/`` may have been planted by another member, and the person reading
may be the project owner. So the task's directory is walked from ``data/`` component by
component as the launcher walks it (``safefs.Root``: real directories, owned by someone
who may write in the project, no link followed), and each output is opened without
following a link and without blocking, then checked: a regular file of one link, owned by
someone trusted. A planted FIFO, device, link or hard link is refused with one line naming
it. Nothing is made; the walk's one write is the launcher's own repair, a directory of the
reader's own given back ``data/``'s default ACL (``safefs.Root.enter``).

A run writes ``task.out`` and ``task.err`` (and ``preprocess.out`` … for an app's pre- and
postprocessing: the *step*); a run that may not append to an earlier run's file (another
member's launcher made it without group write) writes ``task.N.out`` beside it
(``base/taskfiles``). All of them are read, oldest name first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..base import safefs, taskfiles
from ..base.errors import NotFound

STREAMS = ("out", "err")
STEPS = ("task", "preprocess", "postprocess")  # node/taskplace.py, node/prepost.py
CHUNK = 1 << 20  # what one read takes while streaming a whole file
TAIL_BLOCK = 1 << 16  # reading backwards for the last lines, a block at a time
TAIL_MAX = 64 << 20  # at most this much is read back for --tail, however few newlines
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NoDirectory(NotFound):
    """The task's directory is not there: no launcher has made it (yet, or ever)."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"{missing}: no launcher has made it yet")
        self.missing = missing  # "data/<workflow>/… does not exist"


@dataclass
class OutputFile:
    """One output file, open for reading (closed by :func:`opened`'s context)."""

    name: str  # e.g. data/fit/0/run_7/task.err, as messages name it
    fd: int
    size: int

    def chunks(self, tail_lines: int | None = None, start: int = 0) -> Iterator[bytes]:
        """The file from ``start`` in chunks, or its last ``tail_lines`` lines."""
        offset = start if tail_lines is None else tail_start(self.fd, self.size, tail_lines)
        while offset < self.size:
            data = os.pread(self.fd, min(CHUNK, self.size - offset), offset)
            if not data:
                return
            offset += len(data)
            yield data


def names(entries: list[str], stream: str, step: str = "task") -> list[str]:
    """The output names of one step's stream among a directory's entries, in the order
    the runs made them: ``task.out``, then ``task.1.out``, ``task.2.out``…"""
    pattern = re.compile(rf"{step}(?:\.([1-9][0-9]{{0,5}}))?\.{stream}")
    found = [(int(m.group(1) or 0), e) for e in entries if (m := pattern.fullmatch(e))]
    return [e for _, e in sorted(found)]


@contextlib.contextmanager
def opened(data_dir: Path, workdir: Path, stream: str, step: str = "task"
           ) -> Iterator[list[OutputFile]]:
    """The task's output files of ``stream`` ('out' or 'err') of ``step``, each checked
    (see the module); NotFound when the directory or the files are not there."""
    data = str(data_dir)
    parts = Path(os.path.relpath(workdir, data)).parts
    if not parts or parts[0] in (os.curdir, os.pardir):
        raise NotFound(f"{workdir} is not inside {data}")
    root = safefs.Root.open(data)
    files: list[OutputFile] = []
    try:
        try:
            dir_fd = root.open_dir(parts, create=False)
        except safefs.UnsafePath as exc:
            if str(exc).endswith("does not exist"):
                raise NoDirectory(str(exc)) from None
            raise
        try:
            label = "/".join((root.label, *parts))
            for name in names(os.listdir(dir_fd), stream, step):
                files.append(_open(dir_fd, name, f"{label}/{name}", root.trust))
        finally:
            os.close(dir_fd)
        if not files:
            raise NotFound(f"{label}/{step}.{stream} does not exist")
        yield files
    finally:
        for f in files:
            os.close(f.fd)
        root.close()


def _open(dir_fd: int, name: str, where: str, trust: safefs.Trust) -> OutputFile:
    """Only a regular file is opened at all (a device's open can act); the open follows
    no link, and what it opened must be what was looked at."""
    try:
        seen = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(seen.st_mode):
            raise safefs.UnsafePath(f"refusing {where}: it is {safefs.kind_of(seen.st_mode)}"
                                    ", not a file (planted?)")
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a link since
            raise safefs.UnsafePath(f"refusing {where}: it is a symbolic link (planted?)"
                                    ) from None
        raise safefs.UnsafePath(f"cannot open {where}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        taskfiles.check_appendable(st, trust, where, (seen.st_dev, seen.st_ino))
    except BaseException:
        os.close(fd)
        raise
    return OutputFile(where, fd, st.st_size)


def tail_start(fd: int, size: int, lines: int) -> int:
    """Where the last ``lines`` lines of the file begin (a last line without a newline
    counts as one), reading backwards a block at a time, at most ``TAIL_MAX`` bytes."""
    if lines <= 0:
        return size
    end = size
    seen = 0
    # A newline that ends the file closes the last line; it starts none.
    if size and os.pread(fd, 1, size - 1) == b"\n":
        end = size - 1
    pos = end
    while pos > 0 and size - pos < TAIL_MAX:
        step = min(TAIL_BLOCK, pos)
        block = os.pread(fd, step, pos - step)
        pos -= step
        at = len(block)
        while True:
            at = block.rfind(b"\n", 0, at)
            if at < 0:
                break
            seen += 1
            if seen == lines:
                return pos + at + 1
    return pos
