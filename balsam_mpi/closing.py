"""The end of a leader's run: write what it holds, close the batch job, settle the journal.

This is a loop, like the leader's own, and it keeps heartbeating: the final write once
blocked for two minutes in a retry sleep with no heartbeat, another leader declared the
job lost meanwhile, and every task ran a second time. Now the write is retried with the
buffer's pauses (and split around a report the server cannot store) while heartbeats go
on; a database that comes back in time gets everything directly. Once the lease has gone
unrenewed for :data:`PATIENCE_S` (or the whole lease, if longer) — the database away —
it gives up: everything it held is in the journal, which the next leader or
``balsam-dbctl recover`` replays before that lease is declared lost.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from .errors import BalsamError

if TYPE_CHECKING:
    from .leader import Leader

log = logging.getLogger(__name__)

PATIENCE_S = 30.0


def close_out(ld: Leader, reason: str) -> bool:
    """True once the batch job is closed with everything written."""
    ld.adds.close()  # the task_api socket (its tasks have ended)
    closing: Future[tuple[int, int]] | None = None
    retry_at = 0.0
    while True:
        ld.collect()
        now = time.monotonic()
        if closing is not None and closing.done():
            try:
                released, requeued = closing.result()
            except BalsamError as exc:
                log.warning("could not close the batch job (%s); retrying", exc)
                closing, retry_at = None, now + 1.0
            else:
                log.info("batch job %s closed (%s): %s claims released, %s tasks requeued",
                         ld.lease.job_id, reason, released, requeued)
                _settle_journal(ld, closed=True)
                return True
        idle = not ld.buffer and ld.flushing is None and ld.claims.future is None
        if idle and closing is None and ld.killing is None and now >= retry_at:
            closing = ld.db.submit(ld.store.close_job, ld.lease, "FINISHED", reason)
        ld.flush()
        ld.heartbeat()
        silent = ld.lease_watch.silence()
        if ld.lease_lost or silent >= max(PATIENCE_S, ld.s.lease_s):
            held = len(ld.buffer) + (len(ld.flushing[0]) if ld.flushing else 0)
            where = ld.journal.path if ld.journal is not None else None
            log.error("giving up the final write: %s; %s report(s) not written%s",
                      "the lease is lost" if ld.lease_lost
                      else f"no heartbeat for {silent:.0f} s", held,
                      f" (they are in the journal {where}: the next launcher or "
                      "`balsam-dbctl recover` writes them)" if where else "")
            _settle_journal(ld, closed=False)
            return False
        ld.local.wait(0.05)


def _settle_journal(ld: Leader, *, closed: bool) -> None:
    """A clean close makes the journal useless: marked done and removed. Otherwise it is
    completed with an end line and left for a replay."""
    journal = ld.journal
    if journal is None:
        return
    journal.close(complete=True)
    if not closed or journal.failed is not None:
        return
    try:
        ld.db.submit(ld.store.journal_done, ld.lease).result(timeout=30)
    except (BalsamError, TimeoutError) as exc:
        log.warning("could not mark the journal done (%s); it stays for a replay", exc)
        return
    journal.remove()
