"""The leader's buffer of node reports, written to the database in bulk.

Reports are flushed when ``size`` of them wait or the oldest has waited ``interval_s``:
one call per flush whatever the number of tasks. If the database is away the buffer keeps
everything (nothing is dropped), retries with a growing pause and reconnects; the tasks'
times were taken on their nodes, so a late write still records when things happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from .errors import BalsamError, ServerError
from .protocol import EndKind, Finished, Started
from .store import Lease, Store

log = logging.getLogger(__name__)


class ReportBuffer:
    def __init__(self, store: Store, lease: Lease, size: int, interval_s: float) -> None:
        self.store = store
        self.lease = lease
        self.size = size
        self.interval_s = interval_s
        self.started: list[Started] = []
        self.finished: list[Finished] = []
        self.oldest = 0.0
        self.retry_at = 0.0
        self.retry_pause = 0.0
        self.written_started = 0
        self.written_finished = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self.started) + len(self.finished)

    def __bool__(self) -> bool:
        return bool(self.started or self.finished)

    def add(self, started: Iterable[Started], finished: Iterable[Finished]) -> None:
        if not self:
            self.oldest = time.monotonic()
        self.started.extend(started)
        self.finished.extend(finished)

    def due(self) -> bool:
        if not self:
            return False
        now = time.monotonic()
        if now < self.retry_at:
            return False
        return len(self) >= self.size or now - self.oldest >= self.interval_s

    def flush(self) -> bool:
        """Write everything held (raises BalsamError, keeping it, when that fails).
        True when tasks ended (their children may be runnable now)."""
        if not self:
            return False
        started, finished = self.started, self.finished
        if self.store.broken:
            self.store.reconnect()
        counts = self.store.report(self.lease, started, finished)
        self.started, self.finished = [], []
        self.written_started += len(started)
        self.written_finished += len(finished)
        ends = sum(1 for f in finished if f.kind != EndKind.KILLED)
        refused = (len(started) - counts.get("started", 0)) + (ends - counts.get("ended", 0))
        if refused > 0:
            self.refused += refused
            log.warning("%s reports refused (killed meanwhile, or from a superseded claim)",
                        refused)
        self.retry_pause = 0.0
        return bool(finished)

    def flush_safely(self) -> bool:
        """Flush; on a database error keep everything and retry later with backoff."""
        try:
            return self.flush()
        except BalsamError as exc:
            self.retry_pause = min(30.0, max(0.5, self.retry_pause * 2))
            self.retry_at = time.monotonic() + self.retry_pause
            level = logging.WARNING if isinstance(exc, ServerError) else logging.ERROR
            log.log(level, "could not write %s reports (%s); holding them, retry in %.1f s",
                    len(self), exc, self.retry_pause)
            return False

    def flush_until_written(self, patience_s: float = 120.0) -> None:
        """At the end: keep trying (with pauses) until written or patience runs out."""
        give_up = time.monotonic() + patience_s
        while self:
            try:
                self.flush()
                return
            except BalsamError as exc:
                if time.monotonic() >= give_up:
                    raise
                pause = min(10.0, max(0.5, self.retry_pause * 2))
                self.retry_pause = pause
                log.warning("could not write %s reports (%s); retrying in %.1f s",
                            len(self), exc, pause)
                time.sleep(pause)
