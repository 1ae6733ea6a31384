"""Logging for launcher ranks: rank and host on every record, one file per rank.

Records go to ``PROJECT/log/launcher_<run>_r<rank>.log`` and warnings also to stderr, so
a failing rank is visible in the job's output without drowning it when thousands of ranks
run. ``log/`` is writable by the whole group, so the file is made the way ``safefs``
makes files: in the directory's descriptor (a real directory of the project owner, never
through a symlink), with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a fresh name
(``….1.log``, ``….2.log``, …) when the name is taken — by a planted link or an earlier run
— and mode 0640, so others in the group read it but cannot forge lines in it.

Nor through a record: a message may carry values a member chose (a task's name, what its
function raised), so its newlines and whatever a terminal would act on are spelled out
(``termtext``): one record is one line (a traceback's lines follow it, indented), and
`tail -f` on a log is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..base import safefs
from ..base.termtext import visible

LOG_MODE = 0o640

FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s %(host)s] %(name)s: %(message)s"


class _Formatter(logging.Formatter):
    """Records as lines no value in them can split or turn into terminal commands."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = visible(record.message, newlines=False)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        # A traceback keeps its lines, each indented: an exception's message may hold a
        # newline, and no line of it may start as a record does (with the time).
        text = visible(super().formatException(ei))
        return "\n".join(f"    {line}" for line in text.split("\n"))


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, host: str) -> None:
        super().__init__()
        self.rank = rank
        self.host = host

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        record.host = self.host
        return True


class _FileHandler(logging.Handler):
    """A rank's log file, written a record at a time with ``os.write`` (appending, no
    buffer to grow). When a write fails (its file system full, a quota), Python's handler
    printed a dozen-line `--- Logging error ---` traceback to stderr for every record,
    drowning the job's output: this says so in one line, then once more if writes fail
    again after they worked."""

    def __init__(self, fd: int, path: Path) -> None:
        super().__init__()
        self.fd = fd
        self.path = path
        self.failing = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:  # a record that cannot be formatted: logging's own report
            self.handleError(record)
            return
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as exc:
            if not self.failing:
                self.failing = True
                sys.stderr.write(f"balsam_mpi launcher: the log file {self.path} cannot be "
                                 f"written ({exc}): records are lost until it can be "
                                 "written again (warnings still come here)\n")
                sys.stderr.flush()
            return
        self.failing = False

    def close(self) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        super().close()


def setup(rank: int, log_dir: Path | None, run_name: str, level: str = "INFO",
          stderr_level: int = logging.WARNING) -> Path | None:
    """Configure the root logger for this rank; returns the log file (None if unwritable)."""
    host = socket.gethostname()
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = _Formatter(FORMAT)
    rank_filter = _RankFilter(rank, host)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(stderr_level)
    err.setFormatter(fmt)
    err.addFilter(rank_filter)
    root.addHandler(err)
    path: Path | None = None
    if log_dir is not None:
        try:
            dfd = safefs.open_project_dir(str(log_dir.parent), log_dir.name)
            try:
                fd, name = safefs.create_new(dfd, f"launcher_{run_name}_r{rank}.log",
                                             LOG_MODE, str(log_dir))
            finally:
                os.close(dfd)
        except (safefs.UnsafePath, OSError) as exc:
            root.warning("no log file: %s", exc)
        else:
            path = log_dir / name
            handler = _FileHandler(fd, path)
            handler.setFormatter(fmt)
            handler.addFilter(rank_filter)
            root.addHandler(handler)
    return path
