"""The reports that are tables rather than time series: usage per user and workflow,
latency per pipeline stage, failures grouped by what they share, and the batch-job list."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import sql
from ..base import db
from .history import (
    Filters,
    FloatArray,
    Window,
    choose_window,
    load_jobs,
    report_transaction,
    run_bins_params,
)
from .timefmt import iso

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class UsageRow:
    job_id: int
    job_user: str  # whose allocation paid
    workflow: str
    owner: str  # whose work ran
    node_seconds: float
    done: int
    failed: int


def usage(conn: psycopg.Connection[Any], filters: Filters) -> tuple[Window, list[UsageRow]]:
    """Busy node-seconds and runs per (batch job, workflow, task owner) in the window."""
    jobs = [j for j in load_jobs(conn, filters) if j.started_at is not None]
    window = choose_window(conn, jobs, filters)
    if not jobs:
        return window, []
    params = run_bins_params(filters, jobs, window, split=True)
    with report_transaction(conn):
        rows = conn.execute(sql.query("analytics_run_bins"), params).fetchall()
    users = {j.id: j.user for j in jobs}
    # (job, bin 0, workflow, owner, level, partial, node_seconds, done, failed, ...)
    return window, [UsageRow(r[0], users[r[0]], r[2], r[3], max(0.0, float(r[6] or 0.0)),
                             int(r[7]), int(r[8])) for r in rows]


def usage_summary(rows: list[UsageRow]) -> dict[str, list[dict[str, Any]]]:
    """Node-hours and runs by batch-job user, by task owner, by workflow, and by the pair
    (job user, owner) — members' launchers run each other's tasks."""
    splits = {
        "by_job_user": ("job_user",),
        "by_owner": ("owner",),
        "by_workflow": ("workflow",),
        "by_job_user_and_owner": ("job_user", "owner"),
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for split, fields in splits.items():
        sums: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for row in rows:
            acc = sums[tuple(str(getattr(row, f)) for f in fields)]
            acc[0] += row.node_seconds
            acc[1] += row.done
            acc[2] += row.failed
        out[split] = [
            {**dict(zip(fields, k, strict=True)), "busy_node_hours": v[0] / 3600.0,
             "done": int(v[1]), "failed": int(v[2])}
            for k, v in sorted(sums.items(), key=lambda kv: (-kv[1][0], kv[0]))
        ]
    return out


STAGES = ("ready_to_claimed", "claimed_to_running", "running_to_done", "ready_to_done")
LATENCY_SAMPLE = 200_000  # tasks; beyond this, every k-th task by id gives the percentiles


def latency(conn: psycopg.Connection[Any], filters: Filters) -> dict[str, Any]:
    """Seconds per stage of each task's latest run, and queued -> started per batch job."""
    jobs = load_jobs(conn, filters)
    started = [j for j in jobs if j.started_at is not None]
    window = choose_window(conn, started, filters)
    with db.translated():
        (estimate,) = conn.execute(sql.query("analytics_task_estimate")).fetchone() or (0,)
    every = max(1, -(-int(estimate) // LATENCY_SAMPLE))
    params = {**filters.task_params(), **filters.job_params(),
              "t0": window.t0, "t1": window.t1, "every": every}
    with report_transaction(conn):
        rows = conn.execute(sql.query("analytics_latency"), params).fetchall()
    stages = []
    for number, name in enumerate(STAGES, start=1):
        hist = np.array([r[1:] for r in rows if r[0] == number], dtype=np.float64)
        if hist.size:
            stages.append({"stage": name, **stage_stats(hist)})
    waits = np.array([j.queue_seconds for j in started if j.queue_seconds is not None
                      and j.started_at is not None and window.t0 <= j.started_at < window.t1])
    if waits.size:
        stages.append({"stage": "batch_job_queued_to_started", "count": int(waits.size),
                       "mean": float(waits.mean()), **_percentiles(np.sort(waits)),
                       "max": float(waits.max())})
    return {"since": iso(window.t0), "until": iso(window.t1), "sample_every": every,
            "stages": stages}


def stage_stats(hist: FloatArray) -> dict[str, Any]:
    """count, mean, p50/p90/p99 and max from histogram rows (bucket, n, sum, min, max).

    Count, mean and max are exact. Percentiles interpolate like percentile_cont over the
    values, each bucket's values spread evenly between its own min and max: exact when a
    bucket holds one value or equal values, else off by less than a bucket (12%)."""
    hist = hist[np.argsort(hist[:, 0])]
    counts = hist[:, 1].astype(np.int64)
    spread = [np.linspace(lo, hi, n) for n, lo, hi in zip(counts, hist[:, 3], hist[:, 4],
                                                        strict=True)]
    values = np.concatenate(spread)
    total = int(counts.sum())
    return {"count": total, "mean": float(hist[:, 2].sum() / total),
            **_percentiles(values), "max": float(hist[:, 4].max())}


def _percentiles(sorted_values: FloatArray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(sorted_values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def failures(conn: psycopg.Connection[Any], filters: Filters,
             limit: int = 50) -> dict[str, Any]:
    """Failed tasks grouped by app, state, exit code, host and first line of output."""
    if filters.batch_job is not None:
        load_jobs(conn, filters)  # an unknown batch job is an error, not an empty report
    t0 = filters.since or _EPOCH
    t1 = filters.until or _FAR
    params = {**filters.task_params(), **filters.job_params(),
              "t0": t0, "t1": t1, "limit": limit}
    with db.translated():
        rows = conn.execute(sql.query("analytics_failures"), params).fetchall()
    groups = [{"app": r[0], "state": r[1], "exit_code": r[2], "host": r[3],
               "first_line": r[4] or "", "tasks": int(r[5]), "example_ids": list(r[6]),
               "last_at": iso(r[7])} for r in rows]
    return {"since": iso(filters.since), "until": iso(filters.until),
            "failed_tasks": sum(g["tasks"] for g in groups), "groups": groups}


def list_jobs(conn: psycopg.Connection[Any], *, state: str | None = None,
              user: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    with db.translated():
        rows = conn.execute(sql.query("jobs_list"),
                            {"state": state, "user": user, "limit": limit}).fetchall()
    out = []
    for r in rows:
        out.append({
            "id": r[0], "scheduler": r[1], "scheduler_job_id": r[2], "user": r[3],
            "host": r[4], "nodes": r[5], "ranks": r[6], "state": r[7],
            "wall_time_min": r[8], "submitted_at": iso(r[9]), "started_at": iso(r[10]),
            "heartbeat_at": iso(r[11]), "ended_at": iso(r[12]), "end_reason": r[13],
            "filters": r[14], "running_tasks": int(r[15]),
            # Set while a QUEUED row's submission answer is lost (job sync resolves it).
            "uncertain_at": iso(r[16]),
        })
    return out


# failures without --since/--until cover all time
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = datetime(9999, 1, 1, tzinfo=UTC)
