"""The end of a leader's run: write what it holds, close the batch job, settle the journal.

This is a loop, like the leader's own, and it keeps heartbeating: the final write once
blocked for two minutes in a retry sleep with no heartbeat, another leader declared the
job lost meanwhile, and every task ran a second time. Now the write is retried with the
buffer's pauses (and split around a report the server cannot store) while heartbeats go
on; a database that comes back in time gets everything directly. Once the lease has gone
unrenewed for ``close_patience_s`` (30 s unless set), or the whole lease if longer — the
database away — it gives up: everything it held is in the journal, which the next leader
or ``balsam-dbctl recover`` replays before that lease is declared lost.
"""

from __future__ import annotations

import logging

from ..base.errors import BalsamError
from ..base.pacing import Backoff
from ..node.node import Node
from .calls import Calls
from .journal import Journal
from .lease import LeaseWatch
from .reports import ReportBuffer
from .storeport import Lease, StorePort

log = logging.getLogger(__name__)


class Closing:
    def __init__(self, calls: Calls, store: StorePort, lease: Lease, buffer: ReportBuffer,
                 lease_watch: LeaseWatch, local: Node, *, journal: Journal | None = None,
                 lease_s: float = 60.0, patience_s: float = 30.0) -> None:
        self.calls = calls
        self.store = store
        self.lease = lease
        self.buffer = buffer
        self.lease_watch = lease_watch
        self.local = local  # only slept on: it wakes when a database call finishes
        self.journal = journal
        self.give_up_s = max(patience_s, lease_s)
        self.retry = Backoff(1.0, 10.0, jitter=0.2)
        self.closed: tuple[int, int] | None = None  # (claims released, tasks requeued)

    def run(self, reason: str) -> bool:
        """True once the batch job is closed with everything written."""
        while True:
            self.calls.collect()
            if self.closed is not None:
                released, requeued = self.closed
                log.info("batch job %s closed (%s): %s claims released, %s tasks requeued",
                         self.lease.job_id, reason, released, requeued)
                self._settle_journal(closed=True)
                return True
            # Close once nothing else is on its way: the reports first, then the close,
            # not while a heartbeat is out (it runs on the claims' connection, beside).
            # A heartbeat that crossed the close found the job closed by it and answered
            # "not alive": heard before the close's own answer, it passed for a lost
            # lease, and a run that had written everything gave up. Heartbeats go on
            # while the close is on its way (a close can wait on rows a member's bulk
            # kill holds), and a "not alive" heard meanwhile waits for its answer.
            calls = self.calls
            quiet = not self.buffer.pending and not calls.busy("claim") \
                and not calls.busy("kills") and not calls.busy("heartbeat") \
                and not self.lease_watch.lost
            if quiet and self.retry.ready() and calls.start(
                    "close", self.store.close_job, self.lease, "FINISHED", reason,
                    then=self._closed, failed=self._not_closed):
                self.lease_watch.closing = True
            self.buffer.flush()
            self.lease_watch.heartbeat()
            silent = self.lease_watch.silence()
            lost = self.lease_watch.lost and not calls.busy("close")
            if lost or silent >= self.give_up_s:
                self._give_up(silent)
                return False
            self.local.wait(0.05)

    def _closed(self, counts: tuple[int, int]) -> None:
        self.closed = counts

    def _not_closed(self, exc: BalsamError) -> None:
        pause = self.retry.failed()
        log.warning("could not close the batch job (%s); retrying in %.1f s", exc, pause)

    def _give_up(self, silent: float) -> None:
        held = len(self.buffer) + (len(self.buffer.writing) if self.buffer.writing else 0)
        where = self.journal.path if self.journal is not None else None
        log.error("giving up the final write: %s; %s report(s) not written%s",
                  "the lease is lost" if self.lease_watch.lost
                  else f"no heartbeat for {silent:.0f} s", held,
                  f" (they are in the journal {where}: the next launcher or "
                  "`balsam-dbctl recover` writes them)" if where else "")
        self._settle_journal(closed=False)

    def _settle_journal(self, *, closed: bool) -> None:
        """A clean close makes the journal useless: marked done and removed. Otherwise it
        is completed with an end line and left for a replay."""
        journal = self.journal
        if journal is None:
            return
        journal.close(complete=True)
        if not closed or journal.failed is not None:
            return
        try:
            self.calls.run(self.store.journal_done, self.lease, timeout=30)
        except (BalsamError, TimeoutError) as exc:
            log.warning("could not mark the journal done (%s); it stays for a replay", exc)
            return
        journal.remove()
