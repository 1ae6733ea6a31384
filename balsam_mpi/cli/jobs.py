"""`balsam-mpi job ls|show|sync`: the batch jobs that ran (or run) against this project."""

from __future__ import annotations

import shlex
from typing import Any

import click

from ..base.clibase import echo, echo_json
from ..base.errors import UsageError
from .context import CliContext, pass_ctx
from .report import connection

_STATES = ("QUEUED", "RUNNING", "FINISHED", "LOST", "FAILED")


@click.group("job")
def job() -> None:
    """List and inspect batch jobs."""


@job.command("ls")
@click.option("--state", metavar="STATE", help=f"Only jobs in this state ({', '.join(_STATES)}).")
@click.option("--user", metavar="NAME", help="Only jobs run by this user.")
@click.option("--limit", "limit_text", default="50", show_default=True, metavar="N",
              help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")
@pass_ctx
def ls(ctx: CliContext, state: str | None, user: str | None, limit_text: str,
       as_json: bool) -> None:
    """Batch jobs, newest first, with the tasks each is running now."""
    from ..base.values import count_from_text, name, show
    from ..reports.render import table
    from ..reports.tables import list_jobs
    from ..reports.timefmt import short_duration

    limit = count_from_text("--limit", limit_text, 100_000)
    if user is not None:
        user = name("--user", user)
    if state is not None:
        state = state.strip().upper()
        if state not in _STATES:
            raise UsageError(f"--state {show(state)} is not a batch-job state: use one of "
                             + ", ".join(_STATES))
    with connection(ctx) as conn:
        rows = list_jobs(conn, state=state, user=user, limit=limit)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        echo("no batch jobs")
        return
    echo(table(
        ["id", "scheduler", "sched id", "user", "host", "nodes", "state", "started (UTC)",
         "wall limit", "running", "end reason"],
        [[r["id"], r["scheduler"], r["scheduler_job_id"] or "-", r["user"], r["host"] or "-",
          r["nodes"], _state_text(r), _short_time(r["started_at"]),
          short_duration(60.0 * r["wall_time_min"]) if r["wall_time_min"] else "-",
          r["running_tasks"], r["end_reason"] or "-"] for r in rows]))


def _state_text(row: dict[str, Any]) -> str:
    """A row held after its scheduler's answer was lost is QUEUED, but its job may not
    exist: say so, and since when (`job sync` finds the job or closes the row)."""
    if row.get("uncertain_at"):
        return f"{row['state']} (uncertain since {_short_time(row['uncertain_at'])})"
    return str(row["state"])


@job.command("show")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")
@pass_ctx
def show(ctx: CliContext, job_id: str, as_json: bool) -> None:
    """One batch job: its record and its utilization, throughput and timings."""
    from ..reports import history
    from ..reports.render import cell, pct, sparkline
    from ..reports.timefmt import iso, short_duration
    from .report import parse_filters

    filters = parse_filters(None, None, job_id, None, None, None, None)
    with connection(ctx) as conn:
        h = history.history(conn, filters)
        record = next(iter(h.jobs), None)
        if record is None:  # queued, never started: nothing to measure yet
            jobs = history.load_jobs(conn, filters)
        takes = _job_filters(conn, filters.batch_job)
    if record is None:
        fields: dict[str, Any] = {"id": jobs[0].id, "state": jobs[0].state,
                                  "user": jobs[0].user, "nodes": jobs[0].nodes,
                                  "scheduler": jobs[0].scheduler,
                                  "scheduler_job_id": jobs[0].scheduler_job_id,
                                  "started_at": None,
                                  "uncertain_at": iso(jobs[0].uncertain_at)}
    else:
        fields = h.job_rows()[0]
        fields["ranks"] = record.ranks
        fields["wall_time_min"] = record.wall_time_min
        fields["utilization_series"] = [
            None if v != v else float(v) for v in h.utilization_series()]
        fields["bin_seconds"] = h.window.width
        fields["uncertain_at"] = iso(record.uncertain_at)
    fields["filters"] = takes
    if as_json:
        echo_json(fields)
        return
    width = max(len(k) for k in _LABELS)
    for key, label in _LABELS.items():
        if key not in fields:
            continue
        value = fields[key]
        if key == "state":
            value = _state_text(fields)
        elif key == "utilization":
            value = pct(value)
        elif key in _TIMES:
            value = _short_time(value)
        elif key == "filters":
            value = filters_text(value)
        elif key.endswith("_seconds"):
            value = short_duration(value)
        elif isinstance(value, float):
            value = cell(value)
        echo(f"{label.ljust(width)}  {'-' if value is None else value}")
    if record is not None:
        echo(f"{'over time'.ljust(width)}  |{sparkline(h.utilization_series(), top=1.0)}|")


_LABELS = {
    "id": "id", "state": "state", "user": "user", "scheduler": "scheduler",
    "scheduler_job_id": "scheduler id", "host": "host", "nodes": "nodes", "ranks": "ranks",
    "wall_time_min": "wall limit (min)", "started_at": "started (UTC)",
    "ended_at": "ended (UTC)", "alive_until": "held nodes until", "end_reason": "end reason",
    "queue_seconds": "queued", "wall_seconds": "wall time", "node_hours": "node-hours",
    "busy_node_hours": "busy node-hours", "utilization": "utilization", "done": "runs done",
    "failed": "runs failed", "first_task_seconds": "to first task",
    "idle_tail_seconds": "idle tail", "filters": "filters",
}


_TIMES = {"started_at", "ended_at", "alive_until"}


def _job_filters(conn: Any, job_id: int | None) -> dict[str, Any]:
    """The launcher's filters the job's row records (submit's, then its launcher's own)."""
    from .. import sql

    row = conn.execute(sql.query("batch_job_filters"), {"id": job_id}).fetchone()
    return dict(row[0] or {}) if row is not None else {}


def filters_text(f: dict[str, Any]) -> str:
    """``workflows a, b; tags k=v; owners alice``, or ``every task``."""
    parts = []
    if f.get("workflows"):
        parts.append("workflows " + ", ".join(map(str, f["workflows"])))
    if f.get("tags"):
        parts.append("tags " + ", ".join(f"{k}={shlex.quote(str(v))}"
                                         for k, v in sorted(f["tags"].items())))
    if f.get("owners"):
        parts.append("owners " + ", ".join(map(str, f["owners"])))
    # One line whatever a member's own launcher recorded (names may hold newlines).
    return " ".join("; ".join(parts).splitlines()) or "every task"


def _short_time(text: str | None) -> str:
    return "-" if not text else text.replace("T", " ").replace("Z", "")[:19]


@job.command("sync")
@click.option("--dry-run", is_flag=True, help="Say what would be closed; change nothing.")
@pass_ctx
def sync_command(ctx: CliContext, dry_run: bool) -> None:
    """Close your QUEUED batch jobs that the scheduler has ended or forgotten.

    A job cancelled or failed before its launcher started leaves its row QUEUED; this
    asks the scheduler (squeue, qstat) and closes such rows as FAILED with the scheduler's
    word for it in the end reason.
    """
    from ..base import db
    from ..batch import jobsync

    with db.translated(), db.connect(ctx.project(), application_name="balsam_mpi job sync",
                                     autocommit=True) as conn:
        result = jobsync.sync(conn, dry_run=dry_run)
    verb = "would close" if dry_run else "closed"
    for job, what in result.found:
        echo(f"batch job {job.id}: {what}")
    for job, reason in result.closed:
        echo(f"{verb} batch job {job.id} ({jobsync.named(job)}): {reason}")
    for job, why in result.unasked:
        echo(f"batch job {job.id} stays QUEUED: {why}")
    echo(f"{len(result.closed)} closed, {len(result.queued)} still queued or running"
         + (" (dry run)" if dry_run else ""))


commands: list[click.Command] = [job]
