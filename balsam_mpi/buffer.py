"""The leader's buffer of node reports, and the thread that writes them (and claims).

Reports are flushed when ``size`` of them wait or the oldest has waited ``interval_s``:
one call per flush whatever the number of tasks. The calls run on one database thread
(in submission order), so the leader keeps answering its workers while Postgres works; a
finished call wakes the leader through an eventfd in its epoll set. If the database is
away, a batch goes back to the front of the buffer (nothing is dropped), and the next try
waits a growing pause and reconnects; the tasks' times were taken on their nodes, so a
late write still records when things happened.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import results
from .errors import BalsamError, ServerError
from .protocol import EndKind, Finished, Started
from .store import Lease, Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class DbThread:
    """One thread running store calls in order; each result wakes the leader's epoll."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="balsam-db")

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        future = self._pool.submit(self._call, fn, *args, **kwargs)
        future.add_done_callback(self._wake)
        return future

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.store.broken:
            self.store.reconnect()  # raises ServerError while the server is away
        return fn(*args, **kwargs)

    def _wake(self, _future: Future[Any]) -> None:
        try:
            os.eventfd_write(self.wake_fd, 1)
        except OSError:
            pass  # closed at shutdown

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        os.close(self.wake_fd)


@dataclass
class Batch:
    started: list[Started] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.started) + len(self.finished)


class ReportBuffer:
    def __init__(self, lease: Lease, size: int, interval_s: float) -> None:
        self.lease = lease
        self.size = size
        self.interval_s = interval_s
        self.held = Batch()
        self.oldest = 0.0
        self.retry_at = 0.0
        self.retry_pause = 0.0
        self.written_started = 0
        self.written_finished = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self.held)

    def __bool__(self) -> bool:
        return bool(self.held.started or self.held.finished)

    def add(self, started: Iterable[Started], finished: Iterable[Finished]) -> None:
        if not self:
            self.oldest = time.monotonic()
        self.held.started.extend(started)
        self.held.finished.extend(finished)

    def due(self) -> bool:
        if not self:
            return False
        now = time.monotonic()
        if now < self.retry_at:
            return False
        return len(self) >= self.size or now - self.oldest >= self.interval_s

    def take(self) -> Batch:
        batch, self.held = self.held, Batch()
        return batch

    def write(self, store: Store, batch: Batch) -> dict[str, int]:
        """The database call (runs on the database thread)."""
        if results.carried(batch.finished):  # Python tasks' return values, same transaction
            return results.report_with_results(store, self.lease, batch.started,
                                               batch.finished)
        return store.report(self.lease, batch.started, batch.finished)

    def written(self, batch: Batch, counts: dict[str, int]) -> None:
        self.written_started += len(batch.started)
        self.written_finished += len(batch.finished)
        ends = sum(1 for f in batch.finished if f.kind != EndKind.KILLED)
        refused = (len(batch.started) - counts.get("started", 0)) + (
            ends - counts.get("ended", 0))
        if refused > 0:
            self.refused += refused
            log.warning("%s reports refused (killed meanwhile, or from a superseded claim)",
                        refused)
        self.retry_pause = 0.0

    def failed(self, batch: Batch, exc: BaseException) -> None:
        """Put the batch back in front (its starts precede later ends) and pause."""
        self.held = Batch(batch.started + self.held.started,
                          batch.finished + self.held.finished)
        self.oldest = time.monotonic()
        self.retry_pause = min(10.0, max(0.5, self.retry_pause * 2))
        self.retry_at = time.monotonic() + self.retry_pause
        level = logging.WARNING if isinstance(exc, ServerError) else logging.ERROR
        log.log(level, "could not write %s reports (%s); holding them, retry in %.1f s",
                len(self), exc, self.retry_pause)

    def flush_now(self, db: DbThread, patience_s: float = 120.0) -> None:
        """At the end: write everything, retrying with pauses until patience runs out."""
        give_up = time.monotonic() + patience_s
        while self:
            batch = self.take()
            try:
                self.written(batch, db.submit(self.write, db.store, batch).result())
            except BalsamError as exc:
                self.failed(batch, exc)
                if time.monotonic() >= give_up:
                    raise
                time.sleep(self.retry_pause)
