"""The leader's buffer of node reports, and the thread that writes them (and claims).

Reports are flushed when ``size`` of them wait or the oldest has waited ``interval_s``:
one call per flush whatever the number of tasks. The calls run on one database thread
(in submission order, heartbeats first), so the leader keeps answering its workers while
Postgres works; a finished call wakes the leader through an eventfd in its epoll set.

* **Nothing is dropped for the database's absence**: a batch that fails for the
  connection goes back to the front of the buffer, and the next try waits a growing
  pause and reconnects; the tasks' times were taken on their nodes, so a late write still
  records when things happened. Every report also goes to the journal (``journal.py``)
  as it arrives, which outlives this process.
* **One bad report never blocks the rest**: texts are cleaned on the way in
  (``cleantext``), and a batch the server refuses for its *data* is split in halves,
  written half by half, until the report it cannot take is alone; that one is written as
  a failure of its task with the server's reason (or, if even that is refused, given up
  with an error in the log: the task is requeued when the batch job closes).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import results
from .cleantext import clean, one_line
from .errors import BalsamError, ServerError
from .journal import Journal
from .limits import OUTPUT_TAIL_MAX
from .protocol import EndKind, Finished, Started
from .store import BadReport, Lease, Store

log = logging.getLogger(__name__)
T = TypeVar("T")
_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DbThread:
    """One thread running store calls in order; each result wakes the leader's epoll.
    ``submit(..., urgent=True)`` goes ahead of what waits (heartbeats: a backlog of
    claims and flushes must not let the lease run out)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="balsam-db", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, urgent: bool = False,
               **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        future.add_done_callback(self._wake)
        with self._cond:
            if self._closed:
                raise RuntimeError("the database thread is closed")
            item: _Call = (future, fn, args, kwargs)
            if urgent:
                self._queue.appendleft(item)
            else:
                self._queue.append(item)
            self._cond.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._queue))
                if not self._queue:
                    return
                future, fn, args, kwargs = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = self._call(fn, *args, **kwargs)
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)

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
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        os.close(self.wake_fd)


@dataclass
class Batch:
    started: list[Started] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    suspect: bool = False  # part of a batch the server refused for its data
    through: int = 0  # the last report group (journal.py) this batch completes

    def __len__(self) -> int:
        return len(self.started) + len(self.finished)

    def halves(self) -> tuple[Batch, Batch]:
        """Split keeping order: every start stays in a half no later than any end."""
        items: list[Started | Finished] = [*self.started, *self.finished]
        mid = len(items) // 2

        def part(xs: list[Started | Finished], through: int) -> Batch:
            return Batch([x for x in xs if isinstance(x, Started)],
                         [x for x in xs if isinstance(x, Finished)], True, through)

        # Only the second half completes what the whole did.
        return part(items[:mid], 0), part(items[mid:], self.through)


def unstorable(item: Finished, reason: str) -> Finished:
    """The failure a refused end is written as instead (kind 15, with the reason)."""
    now = time.time()
    return Finished(item.id, item.epoch, int(EndKind.REFUSED), 127, now, now,
                    one_line(f"the launcher could not store its report: {reason}"))


def _storable(tail: str) -> bool:
    return tail.isascii() and "\x00" not in tail and len(tail) <= OUTPUT_TAIL_MAX


class ReportBuffer:
    def __init__(self, lease: Lease, size: int, interval_s: float,
                 journal: Journal | None = None) -> None:
        self.lease = lease
        self.size = size
        self.interval_s = interval_s
        self.journal = journal
        self.held = Batch()
        self.suspects: deque[Batch] = deque()  # halves of a refused batch, in order
        self.oldest = 0.0
        self.retry_at = 0.0
        self.retry_pause = 0.0
        self.written_started = 0
        self.written_finished = 0
        self.refused = 0
        self.given_up = 0  # reports the database would not take in any form
        self.group = 0  # report groups added so far (journal.py numbers them)
        self._restamped: set[int] = set()  # starts rewritten with the leader's time

    def __len__(self) -> int:
        return len(self.held) + sum(len(b) for b in self.suspects)

    def __bool__(self) -> bool:
        return bool(self.held.started or self.held.finished or self.suspects)

    def add(self, started: Iterable[Started], finished: Iterable[Finished]) -> None:
        started = list(started)
        finished = [f if _storable(f.tail) else f._replace(tail=clean(f.tail))
                    for f in finished]
        if not started and not finished:
            return
        if not self:
            self.oldest = time.monotonic()
        self.group += 1
        self.held.started.extend(started)
        self.held.finished.extend(finished)
        self.held.through = self.group
        if self.journal is not None:
            self.journal.add(self.group, started, finished)

    def due(self) -> bool:
        if self.suspects:
            return True  # finding a bad report: no pause, the server answered at once
        if not self:
            return False
        now = time.monotonic()
        if now < self.retry_at:
            return False
        return len(self) >= self.size or now - self.oldest >= self.interval_s

    def take(self) -> Batch:
        if self.suspects:
            return self.suspects.popleft()
        batch, self.held = self.held, Batch()
        return batch

    def write(self, store: Store, batch: Batch) -> dict[str, int]:
        """The database call (runs on the database thread)."""
        if results.carried(batch.finished):  # Python tasks' return values, same transaction
            return results.report_with_results(store, self.lease, batch.started,
                                               batch.finished, batch.through)
        return store.report(self.lease, batch.started, batch.finished, batch.through)

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
        if not batch.suspect:
            self.retry_pause = 0.0

    def failed(self, batch: Batch, exc: BaseException) -> None:
        """A batch the server refused for its data is split; one refused for any other
        reason goes back in front (its starts precede later ends) after a pause."""
        if isinstance(exc, BadReport):
            self._isolate(batch, exc)
            return
        if batch.suspect:
            self.suspects.appendleft(batch)
        else:
            self.held = Batch(batch.started + self.held.started,
                              batch.finished + self.held.finished,
                              through=max(batch.through, self.held.through))
        self.oldest = time.monotonic()
        self.retry_pause = min(10.0, max(0.5, self.retry_pause * 2))
        self.retry_at = time.monotonic() + self.retry_pause
        level = logging.WARNING if isinstance(exc, ServerError) else logging.ERROR
        log.log(level, "could not write %s reports (%s); holding them, retry in %.1f s",
                len(self), exc, self.retry_pause)

    def _isolate(self, batch: Batch, exc: BadReport) -> None:
        if len(batch) > 1:
            first, second = batch.halves()
            self.suspects.appendleft(second)
            self.suspects.appendleft(first)
            if not batch.suspect:
                log.error("the database refused a batch of %s reports (%s): finding the "
                          "report it cannot take", len(batch), exc)
            return
        items: list[Started | Finished] = [*batch.started, *batch.finished]
        item = items[0]
        if isinstance(item, Started):
            if item.id in self._restamped:
                self.given_up += 1
                log.error("task %s: its start cannot be stored (%s); giving it up", item.id,
                          exc)
                return
            # Only the node's time can be wrong in a start: take the leader's instead.
            self._restamped.add(item.id)
            log.error("task %s: its start cannot be stored (%s); writing it with this "
                      "host's time", item.id, exc)
            self.suspects.appendleft(Batch([Started(item.id, item.epoch, time.time())], [],
                                           True, batch.through))
            return
        if item.kind == EndKind.REFUSED:
            self.given_up += 1
            log.error("task %s: even its failure could not be written (%s); giving it up "
                      "(the batch job's close requeues it)", item.id, exc)
            return
        log.error("task %s: its report cannot be stored (%s); writing it as failed",
                  item.id, exc)
        self.suspects.appendleft(Batch([], [unstorable(item, str(exc))], True,
                                       batch.through))

    def flush_now(self, db: DbThread, patience_s: float = 10.0) -> None:
        """At a crash: write everything, retrying with pauses until patience runs out
        (the journal keeps whatever is left)."""
        give_up = time.monotonic() + patience_s
        while self:
            batch = self.take()
            try:
                self.written(batch, db.submit(self.write, db.store, batch).result())
            except BalsamError as exc:
                self.failed(batch, exc)
                if time.monotonic() >= give_up:
                    raise
                if not self.suspects:
                    time.sleep(self.retry_pause)
