"""Logging for launcher ranks: rank and host on every record, one file per rank.

Records go to ``PROJECT/log/launcher_<run>_r<rank>.log`` (the project's group-writable
log directory) and warnings also to stderr, so a failing rank is visible in the job's
output without drowning it when thousands of ranks run.
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s %(host)s] %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, host: str) -> None:
        super().__init__()
        self.rank = rank
        self.host = host

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        record.host = self.host
        return True


def setup(rank: int, log_dir: Path | None, run_name: str, level: str = "INFO",
          stderr_level: int = logging.WARNING) -> Path | None:
    """Configure the root logger for this rank; returns the log file (None if unwritable)."""
    host = socket.gethostname()
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter(FORMAT)
    rank_filter = _RankFilter(rank, host)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(stderr_level)
    err.setFormatter(fmt)
    err.addFilter(rank_filter)
    root.addHandler(err)
    path: Path | None = None
    if log_dir is not None:
        path = log_dir / f"launcher_{run_name}_r{rank}.log"
        try:
            handler = logging.FileHandler(path)
        except OSError:
            path = None
        else:
            handler.setFormatter(fmt)
            handler.addFilter(rank_filter)
            root.addHandler(handler)
    return path
