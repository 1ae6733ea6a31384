"""Utilization and throughput over time, and per batch job, from the task-event history.

Utilization is the busy node-fraction: each running task weighs
``num_nodes / node_packing_count`` nodes, divided by the nodes of the batch jobs alive at
that time. A run lasts from its RUNNING event to the event that leaves RUNNING (done,
error, timeout, or a requeue or kill that cut it off); a run still open ends when its
batch job stops holding nodes (its end, its last heartbeat when lost, or now). Retried
tasks therefore count every run.

SQL does the aggregation (``analytics_run_bins``: a few rows per batch job and time bin);
numpy turns those into series. Nothing here holds one Python object per event.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .. import sql
from ..base import db
from ..base.errors import NotFound, UsageError
from .timefmt import auto_bin, iso

if TYPE_CHECKING:
    import psycopg

FloatArray = npt.NDArray[np.float64]

MAX_BINS = 100_000  # a longer series is unreadable and slow; ask for a coarser --bin
MAX_CELLS = 2_000_000  # batch jobs x bins fetched from the server


@dataclass(frozen=True)
class Filters:
    """What a report covers. ``batch_job`` and ``user`` select batch jobs (``user`` is the
    batch job's user, whose allocation paid); ``workflow`` and ``owner`` select tasks
    (``owner`` is who created them, whose work ran)."""

    since: datetime | None = None
    until: datetime | None = None
    batch_job: int | None = None
    user: str | None = None
    workflow: str | None = None
    owner: str | None = None
    bin_seconds: float | None = None

    def task_params(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "owner": self.owner}

    def job_params(self) -> dict[str, Any]:
        return {"batch_job": self.batch_job, "user": self.user}


@dataclass(frozen=True)
class BatchJob:
    id: int
    scheduler: str
    scheduler_job_id: str | None
    user: str
    host: str
    nodes: int
    ranks: int
    state: str
    wall_time_min: float | None
    submitted_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    alive_until: datetime | None  # when it stopped holding its nodes (now if running)
    uncertain_at: datetime | None = None  # QUEUED, its submission's answer lost (job sync)

    @property
    def queue_seconds(self) -> float | None:
        if self.submitted_at is None or self.started_at is None:
            return None
        return (self.started_at - self.submitted_at).total_seconds()

    @property
    def wall_seconds(self) -> float | None:
        if self.started_at is None or self.alive_until is None:
            return None
        return (self.alive_until - self.started_at).total_seconds()


@dataclass(frozen=True)
class Window:
    """The report's time range cut into bins of ``width`` seconds (the last may be short)."""

    t0: datetime
    t1: datetime
    width: float

    @property
    def span(self) -> float:
        return (self.t1 - self.t0).total_seconds()

    @property
    def nbins(self) -> int:
        return max(1, math.ceil(self.span / self.width - 1e-9))

    def starts(self) -> FloatArray:
        return np.arange(self.nbins, dtype=np.float64) * self.width

    def ends(self) -> FloatArray:
        return np.minimum(self.starts() + self.width, self.span)

    def lengths(self) -> FloatArray:
        return self.ends() - self.starts()

    def start_times(self) -> list[datetime]:
        return [self.t0 + timedelta(seconds=float(s)) for s in self.starts()]

    def offset(self, when: datetime) -> float:
        return (when - self.t0).total_seconds()


@dataclass
class History:
    """Per batch job and bin: busy and alive node-seconds, runs done and failed."""

    window: Window
    jobs: list[BatchJob]
    busy: FloatArray  # (jobs, bins) busy node-seconds
    alive: FloatArray  # (jobs, bins) node-seconds the jobs held
    done: FloatArray  # (jobs, bins) runs that ended well
    failed: FloatArray  # (jobs, bins) runs that ended in error or timeout
    first_start: FloatArray  # (jobs,) seconds from t0, NaN if no run
    last_end: FloatArray  # (jobs,) seconds from t0, NaN if no run
    filters: Filters = field(default_factory=Filters)

    # ---- totals over batch jobs -------------------------------------------------------
    def total_busy(self) -> FloatArray:
        return self.busy.sum(axis=0) if self.jobs else np.zeros(self.window.nbins)

    def total_alive(self) -> FloatArray:
        return self.alive.sum(axis=0) if self.jobs else np.zeros(self.window.nbins)

    def utilization_series(self) -> FloatArray:
        return ratio(self.total_busy(), self.total_alive())

    def job_utilization_series(self) -> FloatArray:
        return ratio(self.busy, self.alive)

    def utilization(self) -> float | None:
        """The overall busy fraction of every node-second the selected jobs held."""
        return scalar_ratio(float(self.busy.sum()), float(self.alive.sum()))

    def total_done(self) -> FloatArray:
        return self.done.sum(axis=0) if self.jobs else np.zeros(self.window.nbins)

    def total_failed(self) -> FloatArray:
        return self.failed.sum(axis=0) if self.jobs else np.zeros(self.window.nbins)

    # ---- per batch job ----------------------------------------------------------------
    def job_rows(self) -> list[dict[str, Any]]:
        """One dict per batch job: the `report jobs` table."""
        rows = []
        for i, job in enumerate(self.jobs):
            busy = float(self.busy[i].sum())
            alive = float(self.alive[i].sum())
            first = self.first_start[i]
            last = self.last_end[i]
            to_first = tail = None
            if job.started_at is not None and not np.isnan(first):
                to_first = float(first) - self.window.offset(job.started_at)
            if job.alive_until is not None and not np.isnan(last) and job.state != "RUNNING":
                tail = max(0.0, self.window.offset(job.alive_until) - float(last))
            rows.append({
                "id": job.id, "scheduler": job.scheduler,
                "scheduler_job_id": job.scheduler_job_id, "user": job.user, "host": job.host,
                "state": job.state, "nodes": job.nodes, "started_at": iso(job.started_at),
                "ended_at": iso(job.ended_at), "alive_until": iso(job.alive_until),
                "wall_seconds": job.wall_seconds, "queue_seconds": job.queue_seconds,
                "node_hours": alive / 3600.0, "busy_node_hours": busy / 3600.0,
                "utilization": scalar_ratio(busy, alive),
                "done": int(self.done[i].sum()), "failed": int(self.failed[i].sum()),
                "first_task_seconds": to_first, "idle_tail_seconds": tail,
                "end_reason": job.end_reason,
            })
        return rows


def ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """num / den, NaN where nothing was held (no nodes alive: utilization is undefined)."""
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 1e-12)
    return out


def scalar_ratio(num: float, den: float) -> float | None:
    return num / den if den > 1e-12 else None


# ---- loading ----------------------------------------------------------------------------


@contextlib.contextmanager
def report_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One transaction (a savepoint inside the caller's) with the planner settings the
    big scans need; SET LOCAL ends with it, and a failed block rolls them back too."""
    with db.translated(), conn.transaction():
        conn.execute(sql.query("analytics_planner_settings"))
        yield
        conn.execute(sql.query("analytics_planner_reset"))


def job_params(jobs: Sequence[BatchJob]) -> dict[str, Any]:
    """The selected batch jobs as arrays: ids and their lives in epoch seconds."""
    return {
        "job_ids": [j.id for j in jobs],
        "job_s": [_known(j.started_at).timestamp() for j in jobs],
        "job_e": [_known(j.alive_until).timestamp() for j in jobs],
    }


def run_bins_params(filters: Filters, jobs: Sequence[BatchJob], window: Window, *,
                    split: bool = False) -> dict[str, Any]:
    """``analytics_run_bins``'s parameters: per bin of ``window``, or (``split``) one bin
    over the whole window per workflow and owner, for the usage report."""
    return {
        **filters.task_params(), **job_params(jobs),
        "e0": window.t0.timestamp(), "e1": window.t1.timestamp(),
        "width": max(window.span, 1.0) if split else window.width,
        "nbins": 1 if split else window.nbins, "span": window.span, "split": split,
    }


def load_jobs(conn: psycopg.Connection[Any], filters: Filters) -> list[BatchJob]:
    with db.translated():
        rows = conn.execute(sql.query("analytics_batch_jobs"), filters.job_params()).fetchall()
    if filters.batch_job is not None and not rows:
        raise NotFound(f"no batch job {filters.batch_job}"
                       + (f" run by {filters.user}" if filters.user else "")
                       + "; `balsam-mpi job ls` lists them")
    return [BatchJob(*row[:16]) for row in rows]


def choose_window(conn: psycopg.Connection[Any], jobs: Sequence[BatchJob],
                  filters: Filters, *, now: datetime | None = None) -> Window:
    """The report's range: --since/--until, else the life of the selected batch jobs."""
    started = [j.started_at for j in jobs if j.started_at is not None]
    ends = [j.alive_until for j in jobs if j.alive_until is not None]
    t0, t1 = filters.since, filters.until
    if (t0 is None and not started) or (t1 is None and not ends):
        with db.translated():
            first, last = conn.execute(sql.query("analytics_event_span")).fetchone() or (None, None)
        now = now or datetime.now(UTC)
        started = started or [first or now]
        ends = ends or [last or now]
    t0 = t0 or min(started)
    t1 = t1 or max(ends)
    if t1 <= t0:
        if filters.since is not None or filters.until is not None:
            raise UsageError(f"the report's end ({iso(t1)}) is not after its start ({iso(t0)}); "
                             "check --since and --until")
        t1 = t0 + timedelta(seconds=1)  # nothing ran yet: an empty one-second window
    span = (t1 - t0).total_seconds()
    width = filters.bin_seconds or auto_bin(span)
    if filters.since is None:
        # bins on round times (10:20:00, not 10:19:47.3) when the range is ours to choose
        start = t0.timestamp()
        t0 = datetime.fromtimestamp(start - math.fmod(start, width), tz=UTC)
    window = Window(t0, t1, width)
    if window.nbins > MAX_BINS or window.nbins * max(1, len(jobs)) > MAX_CELLS:
        raise UsageError(f"--bin {width:g}s cuts {span:.0f} s into {window.nbins} bins; "
                         "use a larger --bin or a shorter --since/--until range")
    return window


def history(conn: psycopg.Connection[Any], filters: Filters) -> History:
    """Busy and alive node-seconds, runs done and failed, per selected batch job and bin."""
    jobs = [j for j in load_jobs(conn, filters) if j.started_at is not None]
    window = choose_window(conn, jobs, filters)
    nj, nb = len(jobs), window.nbins
    level = np.zeros((nj, nb))
    partial = np.zeros((nj, nb))
    done = np.zeros((nj, nb))
    failed = np.zeros((nj, nb))
    first = np.full(nj, np.nan)
    last = np.full(nj, np.nan)
    if jobs:
        params = run_bins_params(filters, jobs, window)
        with report_transaction(conn):
            rows = conn.execute(sql.query("analytics_run_bins"), params).fetchall()
        if rows:
            index = {j.id: i for i, j in enumerate(jobs)}
            # (job, bin, workflow, owner, level, partial, node_seconds, done, failed,
            #  first, last); workflow and owner are NULL: not split
            data = np.array([[index[r[0]], r[1], r[4], r[5], r[7], r[8],
                              np.nan if r[9] is None else r[9],
                              np.nan if r[10] is None else r[10]] for r in rows],
                            dtype=np.float64)
            ji, bi = data[:, 0].astype(np.intp), data[:, 1].astype(np.intp)
            level[ji, bi] = data[:, 2]
            partial[ji, bi] = data[:, 3]
            done[ji, bi] = data[:, 4]
            failed[ji, bi] = data[:, 5]
            first = _reduce_per_job(nj, ji, data[:, 6], np.fmin)
            last = _reduce_per_job(nj, ji, data[:, 7], np.fmax)
    # Busy nodes at a bin's start is the sum of the steps of earlier bins; over the bin
    # that level holds for its whole length, plus what the steps inside add before its end.
    before = np.cumsum(level, axis=1) - level
    busy = np.clip(before * window.lengths() + partial, 0.0, None)
    alive = _alive_node_seconds(jobs, window)
    return History(window, jobs, busy, alive, done, failed, first, last, filters)


def _reduce_per_job(nj: int, job_index: npt.NDArray[np.intp], values: FloatArray,
                    op: np.ufunc) -> FloatArray:
    out = np.full(nj, np.nan)
    op.at(out, job_index, values)
    return out


def _alive_node_seconds(jobs: Sequence[BatchJob], window: Window) -> FloatArray:
    """Node-seconds each job held in each bin: its nodes times the overlap of its life."""
    if not jobs:
        return np.zeros((0, window.nbins))
    start = np.array([window.offset(_known(j.started_at)) for j in jobs])[:, None]
    end = np.array([window.offset(_known(j.alive_until)) for j in jobs])[:, None]
    nodes = np.array([j.nodes for j in jobs], dtype=np.float64)[:, None]
    overlap = np.minimum(end, window.ends()) - np.maximum(start, window.starts())
    held: FloatArray = np.clip(overlap, 0.0, None) * nodes
    return held


def _known(when: datetime | None) -> datetime:
    if when is None:  # callers pass started jobs only, which always have both times
        raise ValueError("a started batch job without a start or end time")
    return when
