"""The leader's journal: every report it holds, on disk, before the database has it.

A leader cut off from the database for longer than half its lease stops its tasks and
ends; whatever its nodes reported meanwhile used to exist only in its memory, so tasks
that had finished were run again once their lease ran out. Now each report is appended to
``PROJECT/log/journal_<job>_<epoch>_<random>.jsonl`` by a thread of its own, a line per
batch, fsync'd per line (at most 20 times a second), and replayed into the database
by the next leader or `balsam-dbctl recover` (``launcher/replay.py``) — fenced by the lease epoch
and idempotent, so a replay never changes what the live leader already wrote.

The project directory is shared by a group, so a line is only worth what the database
can check: each is ``<hmac> <json>`` where the HMAC-SHA256 is keyed by a secret that
``launcher_journal_key`` gives to the batch job's own user only, and ``launcher_replay``
recomputes it (migration 0008). A forged line stops the replay; a planted file is read
only if it is a regular file owned by the job's user.

Line format (JSON, ASCII): ``{"job": J, "epoch": E, "seq": N, "g": [[group, [Started...],
[Finished...]], ...]}`` with the protocol's tuples as arrays; ``seq`` counts lines from 1
without gaps; a *group* is what one node report brought (numbered by the buffer), and each
flush tells the database up to which group it wrote, so a replay skips those. The last
line of an orderly end carries ``"end": true`` (nothing follows).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from ..protocol import Finished, Started

log = logging.getLogger(__name__)

PREFIX = "journal_"
SUFFIX = ".jsonl"
_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW
          | os.O_CLOEXEC)


def mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode("ascii"), hashlib.sha256).hexdigest()


def file_name(job_id: int, epoch: int) -> str:
    # A random part: a group member cannot squat the name before the leader creates it.
    return f"{PREFIX}{job_id}_{epoch}_{secrets.token_hex(6)}{SUFFIX}"


def parse_name(name: str) -> tuple[int, int] | None:
    """(job, epoch) of a journal file name, or None."""
    if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
        return None
    parts = name[len(PREFIX):-len(SUFFIX)].split("_")
    if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return 0.0
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


Group = tuple[int, list[Started], list[Finished]]


def payload(job_id: int, epoch: int, seq: int, groups: list[Group], end: bool = False) -> str:
    doc: dict[str, Any] = {"job": job_id, "epoch": epoch, "seq": seq, "g": groups}
    if end:
        doc["end"] = True
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:  # a non-finite time: never expected from a node's clock
        doc["g"] = _finite(groups)
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class Journal:
    """Appends reports from the leader's loop; a thread writes and fsyncs them."""

    def __init__(self, directory: Path, job_id: int, epoch: int, key: bytes,
                 min_gap_s: float = 0.05) -> None:
        self.job_id = job_id
        self.epoch = epoch
        self._key = key
        self.min_gap_s = min_gap_s
        self.path = directory / file_name(job_id, epoch)
        self._fd = os.open(self.path, _FLAGS, 0o640)
        # Whatever the umask: the group's replayers must be able to read it.
        os.fchmod(self._fd, 0o640)
        self._cond = threading.Condition()
        self._groups: list[Group] = []
        self.added = 0  # report groups handed to the journal
        self.synced = 0  # groups on disk (fsync'd)
        self.seq = 0  # lines written
        self.failed: str | None = None  # the write error that stopped the journal
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="balsam-journal",
                                        daemon=True)
        self._thread.start()

    def add(self, group: int, started: list[Started], finished: list[Finished]) -> None:
        with self._cond:
            self._groups.append((group, started, finished))
            self.added += 1
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or bool(self._groups))
                if not self._groups:
                    return  # stopped, nothing left
                groups, self._groups = self._groups, []
            began = time.monotonic()
            self._write(groups)
            with self._cond:
                self.synced += len(groups)
                self._cond.notify_all()
                if self._stop:
                    continue
            # Group commit: what arrives meanwhile goes in the next line.
            time.sleep(max(0.0, self.min_gap_s - (time.monotonic() - began)))

    def _write(self, groups: list[Group], end: bool = False) -> None:
        if self.failed is not None:
            return
        text = payload(self.job_id, self.epoch, self.seq + 1, groups, end)
        line = f"{mac(self._key, text)} {text}\n".encode("ascii")
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            # Stop for good: a line missing in the middle would stop every replay there.
            self.failed = str(exc)
            log.error("the journal %s cannot be written (%s): reports are kept in memory "
                      "only from now on", self.path, exc)
            return
        self.seq += 1

    def wait_synced(self, timeout: float) -> bool:
        """Wait until everything added so far is on disk; False on timeout."""
        with self._cond:
            target = self.added
            return self._cond.wait_for(
                lambda: self.synced >= target or self.failed is not None, timeout)

    def close(self, *, complete: bool, timeout: float = 30.0) -> None:
        """Write what is pending; ``complete``: a last line says nothing follows."""
        self.wait_synced(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():  # a file system that hangs: leave the thread be
            return
        if complete:
            self._write([], end=True)
        os.close(self._fd)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError as exc:
            log.warning("could not remove the journal %s: %s", self.path, exc)


def open_journal(directory: Path, job_id: int, epoch: int, key: bytes) -> Journal | None:
    """The leader's journal, or None (with the reason in the log) if it cannot be made."""
    try:
        return Journal(directory, job_id, epoch, key)
    except OSError as exc:
        log.error("cannot create a journal in %s (%s): reports live in memory only, so "
                  "an outage longer than half the lease loses what finished during it",
                  directory, exc)
        return None
