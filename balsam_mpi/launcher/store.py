"""The store port over PostgreSQL (``launcher/storeport.py``): every database call of the launcher.

Open/adopt the batch job, claim, the apps' extras, report (with Python results), kills,
task adds, heartbeat, close, lease expiry (also `balsam-dbctl recover`) and journals.
Only the leader calls these, over one autocommit connection; each is one statement
calling a SECURITY DEFINER function of ``migrations/0004_launcher.sql`` /
``0005_leases.sql`` / ``0008_reliability.sql`` / ``0009_python_tasks.sql`` (the plain
reads need only what every member has), except task adds, which go through the one task
writer the client uses too (``tasks/writer.py``). Driver errors are translated here (through
``db.translated``) and nowhere else in the launcher; a report the server refuses for its
*data* (not the connection) is a :class:`BadReport`, so the buffer can find the one bad
row instead of retrying forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import sql
from ..base import db
from ..base.cleantext import one_line
from ..base.errors import BalsamError
from ..base.project import Project
from ..protocol import EndKind, Finished, Started
from .division import Taker, kind, workflow_set
from .flushrows import floats, ints, lock_timed_out, mark_before, pair_short_runs
from .storeport import (
    AppExtras,
    BadReport,
    Claimed,
    ClaimFilter,
    Ended,
    Expired,
    Held,
    Lease,
    Peers,
    StorePort,
    Written,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

CONTENDED_S = 10.0  # after a row held past the flush's lock_timeout, flushes lock first


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _connect(project: Project, name: str) -> psycopg.Connection[Any]:
    conn = db.connect(project, autocommit=True, application_name=name)
    # A collaborator's role has a statement_timeout (dbctl/rolelimits.py); a lease sweep or
    # a bulk report over a large DAG is the launcher's own long work, so its connection
    # lifts it. Its lock_timeout stays: a lock held too long fails the flush, which retries.
    with db.translated():
        conn.execute(sql.query("launcher_session"))
    return conn


class Store:
    def __init__(self, conn: psycopg.Connection[Any], project: Project | None = None,
                 name: str = "balsam-launcher") -> None:
        self.conn = conn
        self.project = project
        self.name = name  # its application_name (the claims': "balsam-launcher-claims")
        self.contended_until = 0.0  # monotonic: until then, flushes lock their rows first

    @classmethod
    def connect(cls, project: Project, name: str = "balsam-launcher") -> Store:
        return cls(_connect(project, name), project, name)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def reconnect(self) -> None:
        """A fresh connection after the server went away (raises while it is still away)."""
        if self.project is None:
            raise RuntimeError("this store was made without a project; cannot reconnect")
        try:
            self.conn.close()
        finally:
            self.conn = _connect(self.project, self.name)

    @property
    def broken(self) -> bool:
        return bool(self.conn.closed or self.conn.broken)

    def close(self) -> None:
        self.conn.close()

    def _rows(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with db.translated():
            return self.conn.execute(sql.query(name), params, prepare=True).fetchall()

    def open_job(self, *, job_id: int | None, scheduler: str, scheduler_job_id: str | None,
                 host: str, nodes: int, ranks: int, filters: ClaimFilter,
                 wall_time_min: float | None, lease_sec: float) -> Lease:
        from psycopg.types.json import Jsonb

        row = self._rows("launcher_open_job", {
            "job_id": job_id, "scheduler": scheduler, "scheduler_job_id": scheduler_job_id,
            "host": host, "nodes": nodes, "ranks": ranks,
            "filters": Jsonb(filters.as_json()), "wall_time_min": wall_time_min,
            "lease_sec": lease_sec})[0]
        return Lease(int(row[0]), int(row[1]), bool(row[2]))

    def claim(self, lease: Lease, *, limit: int, capacity: float, max_need: float,
              filters: ClaimFilter, remaining_min: float | None = None,
              max_nodes: int = 1) -> list[Claimed]:
        from psycopg.types.json import Jsonb

        rows = self._rows("launcher_claim", {
            "job": lease.job_id, "epoch": lease.epoch, "limit": limit,
            "capacity": capacity, "max_need": max_need,
            "workflows": list(filters.workflows) or None,
            "tags": Jsonb(dict(filters.tags)) if filters.tags else None,
            "owners": list(filters.owners) or None,
            "remaining_min": remaining_min, "max_nodes": max_nodes,
            "not_tags": [Jsonb(dict(t)) for t in filters.not_tags] or None})
        claimed = [Claimed(*r) for r in rows]
        # RETURNING order is not guaranteed: back to the claim's own, priority first.
        claimed.sort(key=lambda c: (-c.priority, c.id))
        return claimed

    def app_extras(self, names: Iterable[str]) -> dict[str, AppExtras]:
        rows = self._rows("launcher_app_extras", {"names": sorted(set(names))})
        return {str(name): AppExtras(str(pre), str(post), bool(on_error), bool(on_timeout),
                                     str(python), bool(task_dirs))
                for name, pre, post, on_error, on_timeout, python, task_dirs in rows}

    def report(self, lease: Lease, started: Sequence[Started],
               finished: Sequence[Finished], through: int = 0) -> dict[str, int]:
        """Write a batch of node reports; returns rows changed per step. Ends of killed
        tasks go too: a run that raced its kill is kept in the history (0008).
        ``through``: the journal's last report group this batch completes.

        Python tasks' return values (``Finished.result``) are written in the same
        transaction, right after the reports that make their tasks JOB_FINISHED
        (``launcher_results``, 0009, fenced like the reports), so whoever waits for a
        task, notified at the commit, never sees it finished without its result. A
        flush that carries no value stays one statement."""
        if not any(f.result is not None and f.kind == EndKind.DONE for f in finished):
            return self._report(lease, started, finished, through)
        # translated() outermost: a connection lost mid-transaction fails its rollback too.
        with db.translated(), self.conn.transaction():
            return self._write(lease, started, finished, through)

    def report_unlocked(self, lease: Lease, started: Sequence[Started],
                        finished: Sequence[Finished], through: int = 0,
                        groups: Sequence[int] = ()) -> Written:
        """The leader's flush: :meth:`report` in one transaction whose lock waits are
        short (``launcher_report_lock_timeout``). When a row stays held past that — a
        member's bulk kill or retry, one statement over up to every task — the flush is
        made again in a transaction that first locks the rows it writes with SKIP LOCKED
        (``launcher_lock_reports``, 0033): a task whose row (or an ended task's child)
        another session holds keeps all its reports out of this flush, named in the
        answer; the journal's mark stops before the first of them, so a replay after a
        crash still writes them. What that lock cannot cover waits at most the short
        lock_timeout too, then fails the flush like an outage."""
        ids = {s.id for s in started} | {f.id for f in finished}
        if not ids:
            return Written(self.report(lease, started, finished, through))
        # First the plain write, under the short lock_timeout: a row held for longer is
        # rare (a member's bulk kill or retry), and locking every row first cost each
        # flush about 45% more database time per task (calibrate.py's fits, A/B). Once
        # a row was held, the next flushes for CONTENDED_S lock first, rather than each
        # waiting out the timeout again.
        if time.monotonic() >= self.contended_until:
            try:
                with db.translated(), self.conn.transaction():
                    self.conn.execute(sql.query("launcher_report_lock_timeout"))
                    return Written(self._write(lease, started, finished, through))
            except BalsamError as exc:
                if not lock_timed_out(exc):
                    raise
                self.contended_until = time.monotonic() + CONTENDED_S
        with db.translated(), self.conn.transaction():
            self.conn.execute(sql.query("launcher_report_lock_timeout"))
            held = frozenset(int(r[0]) for r in self.conn.execute(
                sql.query("launcher_lock_reports"),
                {"job": lease.job_id, "epoch": lease.epoch, "ids": ints(sorted(ids)),
                 "ended": ints(sorted({f.id for f in finished}))},
                prepare=True).fetchall())
            if held:
                through = mark_before(held, started, finished, through, groups)
                started = [s for s in started if s.id not in held]
                finished = [f for f in finished if f.id not in held]
                if not started and not finished:
                    return Written({}, held)
            return Written(self._write(lease, started, finished, through), held)

    def _write(self, lease: Lease, started: Sequence[Started],
               finished: Sequence[Finished], through: int) -> dict[str, int]:
        """The reports, then the Python results of the tasks they finished (in the
        caller's transaction)."""
        counts = self._report(lease, started, finished, through)
        done = [f for f in finished if f.result is not None and f.kind == EndKind.DONE]
        if done:
            row = self._checked("launcher_results", {
                "job": lease.job_id, "epoch": lease.epoch, "ids": [f.id for f in done],
                "results": [f.result for f in done]})
            counts["results"] = int(row[0][0]) if row else 0
        return counts

    def _report(self, lease: Lease, started: Sequence[Started],
                finished: Sequence[Finished], through: int) -> dict[str, int]:
        started, finished, paired = pair_short_runs(started, finished)
        # Transposed with zip (in C): one pass per column instead of a Python loop each.
        s_ids, _s_epochs, s_at = zip(*started, strict=True) if started else ((), (), ())
        f_ids, _f_epochs, f_kind, f_rc, f_started, f_ended, f_tail, *_results = (
            zip(*finished, strict=True) if finished else ((),) * 7)
        rows = self._checked("launcher_report", {
            "job": lease.job_id, "epoch": lease.epoch,
            "s_ids": ints(s_ids), "s_at": floats(s_at),
            "f_ids": ints(f_ids), "f_kind": ints(f_kind), "f_rc": ints(f_rc),
            "f_started": floats(f_started), "f_ended": floats(f_ended),
            "f_tail": list(f_tail), "through": through, "paired": paired})
        return {str(step): int(n) for step, n in rows}

    def _checked(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """A statement whose data the server may refuse: such a refusal is a BadReport."""
        import psycopg

        try:
            return self.conn.execute(sql.query(name), params, prepare=True).fetchall()
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # What the rows carry (a NUL, a number out of range): the same again would
            # fail the same way. The driver raises these for its own encoding too.
            raise BadReport(_first_line(exc)) from exc
        except psycopg.Error as exc:
            raise db.translate(exc) from exc
        except ValueError as exc:  # UnicodeEncodeError: a lone surrogate
            raise BadReport(_first_line(exc)) from exc

    def add_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        from ..tasks.writer import TaskWriter

        return TaskWriter(self.conn).add(tasks)

    def heartbeat(self, lease: Lease) -> bool:
        rows = self._rows("launcher_heartbeat", {"job": lease.job_id, "epoch": lease.epoch})
        return bool(rows[0][0])

    def hunger(self, lease: Lease, *, hungry: bool, holding: bool) -> bool:
        rows = self._rows("launcher_hunger", {"job": lease.job_id, "epoch": lease.epoch,
                                              "hungry": hungry, "holding": holding})
        return bool(rows[0][0])

    def claim_peers(self, lease: Lease) -> Peers:
        """A plain read: members may read every task and batch job."""
        row = self._rows("launcher_claim_peers", {"job": lease.job_id})[0]
        runnable = tuple(row[0] or ())
        counts: dict[str, int] = {}
        if row[2] is not None:
            counts = dict(zip(runnable, (int(n) for n in row[2]), strict=True))
        elif row[4] is not None:  # a launcher filters by owner or tags: counts per kind
            counts = {kind(str(w), None if o is None else str(o), None if g is None else str(g)):
                      int(n) for w, o, g, n in row[4]}
        # The distinct tag filters, in a signature's order (a recorded filter's values
        # are passed on as stored; its keys are unique, so sorting never compares values).
        tag_filters = tuple(tuple(sorted(f.items())) for f in row[5] or ())
        takers = tuple(Taker(int(job), workflow_set(str(w) for w in workflows),
                             float(nodes), float(held), workflow_set(str(o) for o in owners),
                             tag_filters.index(tuple(sorted(tags.items()))) if tags else None)
                       for job, nodes, workflows, held, owners, tags in row[3] or ())
        return Peers(runnable, frozenset(row[1] or ()), counts, takers, tag_filters)

    def give_back(self, lease: Lease, ids: Iterable[int]) -> list[int]:
        rows = self._rows("launcher_give_back", {"job": lease.job_id, "epoch": lease.epoch,
                                                 "ids": ints(ids)})
        return [int(r[0]) for r in rows]

    def kills(self, lease: Lease, ids: Iterable[int]) -> list[int]:
        """Which of these tasks (claimed by this batch job) were killed meanwhile."""
        rows = self._rows("launcher_kills", {"job": lease.job_id, "ids": ints(ids)})
        return [int(r[0]) for r in rows]

    def close_job(self, lease: Lease, state: str, reason: str) -> tuple[int, int]:
        # A reason may quote a traceback: storable text, one line.
        row = self._rows("launcher_close_job", {"job": lease.job_id, "epoch": lease.epoch,
                                                "state": state, "reason": one_line(reason)})[0]
        return int(row[0]), int(row[1])

    def expire_leases(self, job_id: int | None = None) -> list[Expired]:
        """Mark batch jobs whose lease ran out LOST and requeue their tasks, then requeue
        the tasks of superseded runs whose lease ran out (any member may: only expired
        leases are touched). ``job_id`` limits it to that job."""
        rows = self._rows("launcher_expire_leases", {"job": job_id})
        return [Expired(int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), bool(r[5]))
                for r in rows]

    def end_hogging_sessions(self) -> list[Ended]:
        """End collaborators' sessions that fill a shared structure of the server (0031:
        the rules are the database's; any member may call it)."""
        return [Ended(int(r[0]), str(r[1]), str(r[2]), int(r[3]))
                for r in self._rows("end_hogging_sessions", {})]

    # -- overdue jobs and journals (0008) ------------------------------------------------
    def held_elsewhere(self, lease: Lease, filters: ClaimFilter,
                       max_nodes: int) -> list[Held]:
        """Other running batch jobs holding work these filters match (a plain read:
        members may read every task and batch job)."""
        from psycopg.types.json import Jsonb

        rows = self._rows("launcher_held_elsewhere", {
            "job": lease.job_id, "max_nodes": max_nodes,
            "workflows": list(filters.workflows) or None,
            "tags": Jsonb(dict(filters.tags)) if filters.tags else None,
            "owners": list(filters.owners) or None})
        return [Held(int(r[0]), int(r[1]), float(r[2]), float(r[3]), float(r[4]), bool(r[5]))
                for r in rows]

    def journal_key(self, lease: Lease) -> bytes:
        """The MAC key of this leader's journal (only the job's own user gets it)."""
        return bytes(self._rows("launcher_journal_key",
                                {"job": lease.job_id, "epoch": lease.epoch})[0][0])

    def journal_done(self, lease: Lease) -> None:
        self._rows("launcher_journal_done", {"job": lease.job_id, "epoch": lease.epoch})

    def journals_due(self) -> list[tuple[int, int, str, int]]:
        """(job, epoch, job's user, lines replayed so far) of journals worth replaying."""
        return [(int(r[0]), int(r[1]), str(r[2]), int(r[3]))
                for r in self._rows("launcher_journals_due", {})]

    def replay(self, job_id: int, epoch: int, lines: Sequence[str],
               macs: Sequence[str]) -> dict[str, int]:
        """Apply journal lines (the database checks every MAC and the order)."""
        rows = self._rows("launcher_replay", {"job": job_id, "epoch": epoch,
                                              "lines": list(lines), "macs": list(macs)})
        return {str(step): int(n) for step, n in rows}


_ADAPTER: type[StorePort] = Store  # mypy holds the adapter to the port

