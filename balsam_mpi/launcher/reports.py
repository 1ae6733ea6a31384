"""The leader's buffer of node reports, and how it gets them written.

Reports are flushed when ``size`` of them wait or the oldest has waited ``interval_s``:
one store call per flush whatever the number of tasks, run as the leader's background
call ``"flush"`` (``launcher/calls.py``: one in flight at a time, so starts always reach the store
before the ends that follow them).

* **Nothing is dropped for the database's absence**: a batch that fails for the
  connection goes back to the front of the buffer, and the next try waits a growing
  pause (``pacing.Backoff``) and reconnects; the tasks' times were taken on their nodes, so a late write still
  records when things happened. Every report also goes to the journal (``launcher/journal.py``)
  as it arrives, which outlives this process.
* **One bad report never blocks the rest**: texts are cleaned on the way in
  (``cleantext``), and a batch the server refuses for its *data* is split in halves,
  written half by half, until the report it cannot take is alone; that one is written as
  a failure of its task with the server's reason (or, if even that is refused, given up
  with an error in the log: the task is requeued when the batch job closes).
* **Never behind another session's row locks**: a flush writes only the rows it can lock
  at once (``StorePort.report_unlocked``, migration 0033). The reports of a task whose row
  a member's bulk kill or retry holds stay here, in front of what came after them, and go
  with a later flush (after a pause that grows from 0.2 s to 2 s while rows stay held);
  the journal's mark stops before the first of them, so each report is still written
  exactly once, by this leader or by a replay of its journal.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..base.cleantext import clean, one_line
from ..base.errors import BalsamError, ServerError
from ..base.limits import OUTPUT_TAIL_MAX
from ..base.pacing import Backoff
from ..protocol import EndKind, Finished, Started
from .calls import Calls
from .journal import Journal
from .storeport import BadReport, Lease, StorePort, Written

log = logging.getLogger(__name__)


def held_backoff() -> Backoff:
    """The pause before reports of rows another session held are tried again."""
    return Backoff(0.2, 2.0, jitter=0.2)


def retry_backoff(give_up_s: float | None = None) -> Backoff:
    """The pause between tries of a write that failed for the connection: 0.5 s doubling
    to 10 s (the reconnect comes with the next try)."""
    return Backoff(0.5, 10.0, jitter=0.2, give_up_s=give_up_s)


@dataclass
class Batch:
    started: list[Started] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    suspect: bool = False  # part of a batch the server refused for its data
    through: int = 0  # the last report group (launcher/journal.py) this batch completes
    # Each report's own group, in the order of ``started`` and of ``finished``: where the
    # journal's mark stops when some are held back (launcher/flushrows.py, mark_before).
    s_groups: list[int] = field(default_factory=list)
    f_groups: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.started) + len(self.finished)

    @property
    def groups(self) -> list[int]:
        """Each report's group, starts then ends (empty if not known for every one)."""
        if (len(self.s_groups), len(self.f_groups)) != (len(self.started),
                                                        len(self.finished)):
            return []
        return [*self.s_groups, *self.f_groups]

    def split(self, held: frozenset[int]) -> tuple[Batch, Batch]:
        """(the reports of the tasks in ``held``, the others), each in its order; the
        first keeps what this batch completes."""
        groups = self.groups or [0] * len(self)
        sg, fg = groups[:len(self.started)], groups[len(self.started):]

        def part(keep: bool, through: int) -> Batch:
            s = [(x, g) for x, g in zip(self.started, sg, strict=True)
                 if (x.id in held) == keep]
            f = [(x, g) for x, g in zip(self.finished, fg, strict=True)
                 if (x.id in held) == keep]
            return Batch([x for x, _ in s], [x for x, _ in f], self.suspect, through,
                         [g for _, g in s], [g for _, g in f])

        return part(True, self.through), part(False, 0)

    def before(self, later: Batch) -> Batch:
        """This batch's reports, then ``later``'s: one batch that completes what either
        did."""
        return Batch(self.started + later.started, self.finished + later.finished,
                     self.suspect, max(self.through, later.through),
                     self.s_groups + later.s_groups, self.f_groups + later.f_groups)

    def halves(self) -> tuple[Batch, Batch]:
        """Split keeping order: every start stays in a half no later than any end."""
        items: list[Started | Finished] = [*self.started, *self.finished]
        mid = len(items) // 2

        groups = self.groups or [0] * len(items)

        def part(xs: list[Started | Finished], gs: list[int], through: int) -> Batch:
            return Batch([x for x in xs if isinstance(x, Started)],
                         [x for x in xs if isinstance(x, Finished)], True, through,
                         [g for x, g in zip(xs, gs, strict=True) if isinstance(x, Started)],
                         [g for x, g in zip(xs, gs, strict=True) if isinstance(x, Finished)])

        # Only the second half completes what the whole did.
        return (part(items[:mid], groups[:mid], 0),
                part(items[mid:], groups[mid:], self.through))


def unstorable(item: Finished, reason: str) -> Finished:
    """The failure a refused end is written as instead (kind 15, with the reason)."""
    now = time.time()
    return Finished(item.id, item.epoch, int(EndKind.REFUSED), 127, now, now,
                    one_line(f"the launcher could not store its report: {reason}"))


def _storable(tail: str) -> bool:
    return tail.isascii() and "\x00" not in tail and len(tail) <= OUTPUT_TAIL_MAX


class ReportBuffer:
    def __init__(self, lease: Lease, store: StorePort, calls: Calls, *, size: int,
                 interval_s: float, journal: Journal | None = None,
                 retry: Backoff | None = None, held_back: Backoff | None = None) -> None:
        self.lease = lease
        self.store = store
        self.calls = calls
        self.size = size
        self.interval_s = interval_s
        self.journal = journal
        self.retry = retry or retry_backoff()
        self.held_back = held_back or held_backoff()  # rows another session held
        self.deferred = 0  # reports held back for another session's row locks, so far
        self.held = Batch()
        self.suspects: deque[Batch] = deque()  # halves of a refused batch, in order
        self.writing: Batch | None = None  # the flush in flight
        self.oldest = 0.0
        self.flushes = 0  # flushes sent that carried ends (children may become READY)
        self.on_ends_written: Callable[[], object] | None = None
        self.written_started = 0
        self.written_finished = 0
        self.refused = 0
        self.given_up = 0  # reports the database would not take in any form
        self.group = 0  # report groups added so far (launcher/journal.py numbers them)
        self._restamped: set[int] = set()  # starts rewritten with the leader's time

    def __len__(self) -> int:
        return len(self.held) + sum(len(b) for b in self.suspects)

    def __bool__(self) -> bool:
        return bool(self.held.started or self.held.finished or self.suspects)

    @property
    def settled_flushes(self) -> int:
        """Flushes of ends no longer on their way (written, or failed and held again): a
        claim sent now sees what they wrote, on whichever connection it runs."""
        on_way = self.writing is not None and bool(self.writing.finished)
        return self.flushes - (1 if on_way else 0)

    @property
    def pending(self) -> bool:
        """Reports held or being written."""
        return bool(self) or self.writing is not None

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
        self.held.s_groups.extend([self.group] * len(started))
        self.held.f_groups.extend([self.group] * len(finished))
        self.held.through = self.group
        if self.journal is not None:
            self.journal.add(self.group, started, finished)

    def due(self, idle: bool = False) -> bool:
        if not self.held_back.ready():
            return False  # rows another session held: not at once again
        if self.suspects:
            return True  # finding a bad report: no pause, the server answered at once
        if not self or not self.retry.ready():
            return False
        # Idle nodes add nothing more to wait for: the batch is as big as it will get.
        return (idle or len(self) >= self.size
                or time.monotonic() - self.oldest >= self.interval_s)

    def take(self) -> Batch:
        if self.suspects:
            return self.suspects.popleft()
        batch, self.held = self.held, Batch()
        return batch

    # -- writing ----------------------------------------------------------------------
    def flush(self, idle: bool = False) -> bool:
        """Send the next batch when one is due (at once when ``idle``: nothing runs
        anywhere) and none is in flight; True if sent."""
        if self.writing is not None or not self.due(idle):
            return False
        batch = self.writing = self.take()
        if batch.finished:
            self.flushes += 1
        self.calls.start("flush", self.write, batch,
                         then=lambda counts: self._done(batch, counts),
                         failed=lambda exc: self._undone(batch, exc))
        return True

    def write(self, batch: Batch) -> Written:
        """The store call (runs on the database thread)."""
        return self.store.report_unlocked(self.lease, batch.started, batch.finished,
                                          batch.through, batch.groups)

    def _done(self, batch: Batch, answer: Written) -> None:
        self.writing = None
        batch = self.settle(batch, answer)
        if batch.finished and self.on_ends_written is not None:
            self.on_ends_written()  # children may have become READY

    def settle(self, batch: Batch, answer: Written) -> Batch:
        """Count what was written; keep what was held back, in front of what came after
        it (a suspect's in front of the other suspects). Returns the part written."""
        if not answer.deferred:
            self.held_back.reset()
            self.written(batch, answer.counts)
            return batch
        kept, batch = batch.split(answer.deferred)
        self.deferred += len(kept)
        if kept.suspect:
            self.suspects.appendleft(kept)
        else:
            if not self.held:
                self.oldest = time.monotonic()
            self.held = kept.before(self.held)
        pause = self.held_back.failed()
        log.info("%s reports wait for rows another session holds (a bulk kill or retry?); "
                 "trying them again in %.1f s", len(kept), pause)
        self.written(batch, answer.counts)
        return batch

    def _undone(self, batch: Batch, exc: BalsamError) -> None:
        self.writing = None
        self.failed(batch, exc)

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
            self.retry.reset()

    def failed(self, batch: Batch, exc: BaseException) -> None:
        """A batch the server refused for its data is split; one refused for any other
        reason goes back in front (its starts precede later ends) after a pause."""
        if isinstance(exc, BadReport):
            self._isolate(batch, exc)
            return
        if batch.suspect:
            self.suspects.appendleft(batch)
        else:
            self.held = batch.before(self.held)
        self.oldest = time.monotonic()
        pause = self.retry.failed()
        level = logging.WARNING if isinstance(exc, ServerError) else logging.ERROR
        log.log(level, "could not write %s reports (%s); holding them, retry in %.1f s",
                len(self), exc, pause)

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
                                           True, batch.through, batch.s_groups[:1]))
            return
        if item.kind == EndKind.REFUSED:
            self.given_up += 1
            log.error("task %s: even its failure could not be written (%s); giving it up "
                      "(the batch job's close requeues it)", item.id, exc)
            return
        log.error("task %s: its report cannot be stored (%s); writing it as failed",
                  item.id, exc)
        self.suspects.appendleft(Batch([], [unstorable(item, str(exc))], True,
                                       batch.through, [], batch.f_groups[:1]))

    def flush_now(self, patience_s: float = 10.0) -> None:
        """At a crash: write everything, waiting for each write and retrying with pauses
        until ``patience_s`` of failing (the journal keeps whatever is left)."""
        self.calls.settle(patience_s)
        retry = retry_backoff(give_up_s=patience_s)
        while self:
            batch = self.take()
            try:
                answer = self.calls.run(self.write, batch, timeout=patience_s)
            except TimeoutError as exc:
                self.failed(batch, ServerError("no answer"))
                raise ServerError(f"the database did not answer within {patience_s:g} s"
                                  ) from exc
            except BalsamError as exc:
                self.failed(batch, exc)
                retry.failed()
                if retry.exhausted():
                    raise
                if not self.suspects:
                    time.sleep(retry.pause)
            else:
                self.settle(batch, answer)
                if answer.deferred:  # rows another session holds: wait, within patience
                    retry.failed()
                    if retry.exhausted():
                        raise ServerError(f"rows of {len(answer.deferred)} task(s) stayed "
                                          f"locked by another session for {patience_s:g} s")
                    time.sleep(retry.pause)
