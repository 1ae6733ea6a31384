"""The leader's watch over leases: its own, and other batch jobs' that ran out.

* **Its own**: the time of the last heartbeat that renewed the lease is kept (taken when
  the call was *sent*, which is no later than the server's ``heartbeat_at``). Once the
  leader has gone half its lease without one — the database away, or the row no longer
  answering — it stops its own tasks: by the time another leader may requeue them (the
  whole lease), they have been SIGTERMed and, after ``kill_grace_s``, SIGKILLed, so a
  requeued task is never also still running here.
* **Other jobs'**: every ``expire_check_s`` one database-thread call first replays the
  journals of jobs that ended without writing everything (``replay.py``: a task whose
  success is in one is finished, not requeued), then ``launcher_expire_leases`` marks
  batch jobs past their lease LOST and requeues their tasks (migrations/0005). The loop
  never waits for it.

Heartbeats go to the front of the database thread's queue: a backlog of claims and
flushes (or a flush retried during an outage) never delays them.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from pathlib import Path

from .buffer import DbThread
from .config import Settings
from .errors import BalsamError
from .replay import ReplayCache, Replayed, log_replayed, replay_due
from .store import Expired, Lease, Store

log = logging.getLogger(__name__)


def log_expired(found: list[Expired]) -> None:
    for e in found:
        log.warning("batch job %s (%s) lost its lease: marked LOST, %s task(s) requeued, "
                    "%s failed (lost too often), %s unstarted claim(s) released",
                    e.job_id, e.user, e.requeued, e.failed, e.released)


def sweep_once(store: Store, log_dir: Path | None, cache: ReplayCache | None = None
               ) -> tuple[list[Replayed], list[Expired]]:
    """Journals first, then expiry (the order keeps finished work finished)."""
    replayed: list[Replayed] = []
    if log_dir is not None:
        try:
            replayed = replay_due(store, log_dir, cache)
        except BalsamError as exc:  # e.g. a schema without 0008: expiry still works
            log.warning("could not replay journals (%s)", exc)
    return replayed, store.expire_leases()


class LeaseWatch:
    def __init__(self, settings: Settings, db: DbThread, log_dir: Path | None = None
                 ) -> None:
        self.db = db
        self.log_dir = log_dir
        self.cache = ReplayCache()
        self.lease_s = settings.lease_s
        self.interval_s = settings.expire_check_s
        self.last_beat = time.monotonic()  # the lease was opened (or adopted) just now
        self.next_sweep = time.monotonic() + settings.expire_check_s
        self.sweeping: Future[tuple[list[Replayed], list[Expired]]] | None = None
        self.recovered = 0  # tasks of other jobs requeued or failed by this leader

    # -- its own lease ----------------------------------------------------------------
    def heartbeat(self, lease: Lease) -> bool:
        """The heartbeat call (on the database thread); records when it renewed."""
        sent = time.monotonic()
        alive = self.db.store.heartbeat(lease)
        if alive:
            self.last_beat = max(self.last_beat, sent)
        return alive

    def silence(self) -> float:
        """Seconds since the lease was last renewed."""
        return time.monotonic() - self.last_beat

    def silent_for(self) -> float | None:
        """Seconds without a renewed lease once that reaches half the lease, else None."""
        silent = time.monotonic() - self.last_beat
        return silent if silent >= self.lease_s / 2 else None

    # -- other batch jobs' --------------------------------------------------------------
    def sweep(self) -> None:
        """Send the expiry call when due (one in flight at most)."""
        now = time.monotonic()
        if now < self.next_sweep or self.sweeping is not None:
            return
        self.next_sweep = now + self.interval_s
        self.sweeping = self.db.submit(sweep_once, self.db.store, self.log_dir, self.cache)
        self.sweeping.add_done_callback(self._swept)

    def _swept(self, future: Future[tuple[list[Replayed], list[Expired]]]) -> None:
        self.sweeping = None
        try:
            replayed, found = future.result()
        except BalsamError as exc:
            log.warning("could not look for expired leases (%s); will retry", exc)
            return
        self.recovered += sum(e.requeued + e.failed for e in found)
        log_replayed(replayed)
        log_expired(found)

    def settle(self) -> None:
        pending = self.sweeping
        if pending is not None:
            pending.exception()
