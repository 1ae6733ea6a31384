"""Python tasks' return values, written by the leader with the reports that finish them.

A node sends a finished call's return value with its end (``Finished.result``, JSON
text). The leader writes a flush's values in the same transaction as the flush's reports,
right after them: ``launcher_report`` makes the tasks JOB_FINISHED, then
``launcher_results`` (migration 0009) stores the values, fenced like the reports on the
batch job and its lease epoch. Whoever waits for these tasks is notified at the commit,
so a task is never seen JOB_FINISHED without its result. Flushes that carry no value
(every process task, and functions that return None) stay one statement, as before.

A value the server refuses for its data fails the whole write like a bad report does
(``BadReport``), so the buffer's search for the one bad report finds it too
(``buffer.py``); ``launcher_results`` itself refuses nothing (a document that is not
JSON is not stored, and the task's message says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import db, sql
from .protocol import EndKind, Finished, Started
from .store import BadReport, Lease, Store


def carried(finished: Sequence[Finished]) -> bool:
    return any(f.result is not None for f in finished)


def report_with_results(store: Store, lease: Lease, started: Sequence[Started],
                        finished: Sequence[Finished], through: int = 0) -> dict[str, int]:
    """``Store.report`` and the results, in one transaction (database thread)."""
    import psycopg

    done = [f for f in finished if f.result is not None and f.kind == EndKind.DONE]
    # translated() outermost: a connection lost mid-transaction fails its rollback too.
    with db.translated(), store.conn.transaction():
        counts = store.report(lease, started, finished, through)
        if done:
            params: dict[str, Any] = {"job": lease.job_id, "epoch": lease.epoch,
                                      "ids": [f.id for f in done],
                                      "results": [f.result for f in done]}
            try:
                row = store.conn.execute(sql.query("launcher_results"), params,
                                         prepare=True).fetchone()
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                raise BadReport(str(exc).strip().splitlines()[0]) from exc
            except psycopg.Error as exc:
                raise db.translate(exc) from exc
            except ValueError as exc:  # text the driver cannot encode
                raise BadReport(str(exc)) from exc
            counts["results"] = int(row[0]) if row else 0
    return counts
