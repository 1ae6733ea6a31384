"""The leader's watch over leases: its own, and other batch jobs' that ran out.

* **Its own**: the time of the last heartbeat that renewed the lease is kept (taken when
  the call was *sent*, which is no later than the server's ``heartbeat_at``). Once the
  leader has gone half its lease without one — the database away, or the row no longer
  answering — it stops its own tasks: by the time another leader may requeue them (the
  whole lease), they have been SIGTERMed and, after ``kill_grace_s``, SIGKILLed, so a
  requeued task is never also still running here.
* **Other jobs'**: every ``expire_check_s`` one background call (``"sweep"``) first
  has the database end collaborators' sessions that fill its lock table or hold its
  notification queue (``end_hogging_sessions``, migrations/0031: the rules are the
  database's, docs/security.md), then replays the journals of jobs that ended without writing everything (``launcher/replay.py``: a
  task whose success is in one is finished, not requeued), then
  ``launcher_expire_leases`` marks batch jobs past their lease LOST and requeues their
  tasks (migrations/0005). The loop never waits for it.

Heartbeats (the background call ``"heartbeat"``) run on the claims' connection when the
leader has one (``beat_store``; ``launcher/calls.py``, SIDE_CALLS), where no statement
waits on a task row another session holds, and go to the front of its thread's queue: a
flush held up on the leader's connection, a backlog of claims and flushes, or a flush
retried during an outage never delays them. Both are periodic with jitter (``pacing.Periodic``); the heartbeat's
only ever shortens the interval, so it stays under half the lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..base.errors import BalsamError
from ..base.pacing import Periodic
from .calls import Calls
from .replay import ReplayCache, Replayed, log_replayed, replay_due
from .storeport import Ended, Expired, Lease, StorePort

log = logging.getLogger(__name__)


def log_expired(found: list[Expired]) -> None:
    for e in found:
        if e.superseded:
            log.warning("batch job %s (%s) was started again after a run of it ended "
                        "without closing: that run's lease has run out, %s of its tasks "
                        "requeued, %s failed (lost too often), %s unstarted claim(s) "
                        "released", e.job_id, e.user, e.requeued, e.failed, e.released)
            continue
        log.warning("batch job %s (%s) lost its lease: marked LOST, %s task(s) requeued, "
                    "%s failed (lost too often), %s unstarted claim(s) released",
                    e.job_id, e.user, e.requeued, e.failed, e.released)


# What each rule of end_hogging_sessions (migrations/0031) says a session did.
ENDED_FOR = {
    "notifications": "held the server's notification queue, half full, in a transaction "
                     "open for over two minutes",
    "idle transaction": "sat idle in a transaction for over two minutes",
    "long transaction": "kept a transaction open for over an hour",
}


def log_ended(ended: list[Ended]) -> None:
    for e in ended:
        what = (f"held {e.held} entries of the server's lock table" if e.reason == "locks"
                else ENDED_FOR.get(e.reason, f"was ended for {e.reason}"))
        log.warning("the database ended session %s of %s: it %s (docs/security.md, "
                    "\"The server's shared queues\")", e.pid, e.user, what)


def end_hogs(store: StorePort) -> None:
    """First, so that a full lock table does not also stop the sweep's own writes."""
    try:
        log_ended(store.end_hogging_sessions())
    except BalsamError as exc:
        log.warning("could not look for sessions filling the server's queues (%s)", exc)


def sweep_once(store: StorePort, log_dir: Path | None, cache: ReplayCache | None = None
               ) -> tuple[list[Replayed], list[Expired]]:
    """Hogs, journals, then expiry (the order keeps finished work finished)."""
    end_hogs(store)
    replayed: list[Replayed] = []
    if log_dir is not None:
        try:
            replayed = replay_due(store, log_dir, cache)
        except BalsamError as exc:  # e.g. a schema without 0008: expiry still works
            log.warning("could not replay journals (%s)", exc)
    return replayed, store.expire_leases()


class LeaseWatch:
    def __init__(self, calls: Calls, store: StorePort, lease: Lease, *, lease_s: float,
                 heartbeat_s: float, expire_check_s: float, log_dir: Path | None = None,
                 on_lost: Callable[[], object] = lambda: None,
                 on_beat: Callable[[float], object] = lambda _at: None,
                 beat_store: StorePort | None = None) -> None:
        self.calls = calls
        self.store = store
        self.beat_store = beat_store or store  # the connection the heartbeat runs on
        self.lease = lease
        self.log_dir = log_dir
        self.on_lost = on_lost  # the row is no longer this leader's
        self.on_beat = on_beat  # the lease was renewed by a heartbeat sent then
        self.cache = ReplayCache()
        self.lease_s = lease_s
        self.beats = Periodic(heartbeat_s)
        self.sweeps = Periodic(expire_check_s)
        self.last_beat = time.monotonic()  # the lease was opened (or adopted) just now
        self.lost = False
        self.closing = False  # this leader's close was sent (launcher/closing.py)
        self.failing = False  # the last heartbeat failed (the database away)
        self.recovered = 0  # tasks of other jobs requeued or failed by this leader

    # -- its own lease ----------------------------------------------------------------
    def heartbeat(self) -> None:
        """Renew the lease when due (ahead of every other database call)."""
        if self.beats.due():
            self.calls.start("heartbeat", self._beat, urgent=True, then=self._beaten,
                             failed=self._failed)

    def _failed(self, exc: BalsamError) -> None:
        self.failing = True
        log.warning("heartbeat failed (%s); will retry", exc)

    def _beat(self) -> tuple[float, bool]:
        """The heartbeat call (database thread), with when it was sent."""
        sent = time.monotonic()
        return sent, self.beat_store.heartbeat(self.lease)

    def _beaten(self, answer: tuple[float, bool]) -> None:
        sent, alive = answer
        self.failing = False
        if alive:
            self.last_beat = max(self.last_beat, sent)
            self.on_beat(self.last_beat)
        elif not self.lost:
            self.lost = True
            if self.closing:  # most likely closed by this very close: its answer tells
                log.info("batch job %s: a heartbeat found it no longer running, its "
                         "close on its way", self.lease.job_id)
                return
            log.error("batch job %s lost its lease; stopping its tasks", self.lease.job_id)
            self.on_lost()

    def silence(self) -> float:
        """Seconds since the lease was last renewed."""
        return time.monotonic() - self.last_beat

    def silent_for(self) -> float | None:
        """Seconds without a renewed lease once that reaches half the lease, else None."""
        silent = self.silence()
        return silent if silent >= self.lease_s / 2 else None

    # -- other batch jobs' --------------------------------------------------------------
    def sweep(self) -> None:
        """Send the expiry call when due (one in flight at most)."""
        if self.sweeps.due():
            self.calls.start("sweep", sweep_once, self.store, self.log_dir, self.cache,
                             then=self._swept, failed=lambda exc: log.warning(
                                 "could not look for expired leases (%s); will retry", exc))

    def _swept(self, answer: tuple[list[Replayed], list[Expired]]) -> None:
        replayed, found = answer
        self.recovered += sum(e.requeued + e.failed for e in found)
        log_replayed(replayed)
        log_expired(found)
