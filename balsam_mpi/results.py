"""Python tasks' return values, written by the leader with the reports that finish them.

A node sends a finished call's return value with its end (``Finished.result``, JSON
text). The leader writes a flush's values in the same transaction as the flush's reports,
right after them: ``launcher_report`` makes the tasks JOB_FINISHED, then
``launcher_results`` (migration 0010) stores the values, fenced like the reports on the
batch job and its lease epoch. Whoever waits for these tasks is notified at the commit,
so a task is never seen JOB_FINISHED without its result. Flushes that carry no value
(every process task, and functions that return None) stay one statement, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import db, sql
from .protocol import EndKind, Finished, Started
from .store import Lease, Store


def carried(finished: Sequence[Finished]) -> bool:
    return any(f.result is not None for f in finished)


def report_with_results(store: Store, lease: Lease, started: Sequence[Started],
                        finished: Sequence[Finished]) -> dict[str, int]:
    """``Store.report`` and the results, in one transaction (database thread)."""
    done = [f for f in finished if f.result is not None and f.kind == EndKind.DONE]
    with db.translated(), store.conn.transaction():
        counts = store.report(lease, started, finished)
        if done:
            params: dict[str, Any] = {"job": lease.job_id, "epoch": lease.epoch,
                                      "ids": [f.id for f in done],
                                      "results": [f.result for f in done]}
            row = store.conn.execute(sql.query("launcher_results"), params,
                                     prepare=True).fetchone()
            counts["results"] = int(row[0]) if row else 0
    return counts
