"""`balsam-mpi report utilization|throughput|jobs|failures|usage|latency`.

Every report takes the same selection flags. ``--batch-job`` and ``--user`` select batch
jobs (``--user`` is the batch job's user, whose allocation paid); ``--workflow`` and
``--owner`` select tasks (whose work ran). Output is a table with a sparkline, or
``--json`` / ``--csv`` for scripts, and ``--png FILE`` draws a plot besides.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from ..base.clibase import echo, echo_json
from ..base.errors import UsageError
from ..base.termtext import for_stream
from .context import CliContext, pass_ctx

if TYPE_CHECKING:
    import psycopg

    from ..reports.history import Filters

F = Callable[..., Any]


def selection_options(func: F) -> F:
    """The flags every report shares (values parsed by us, so errors are one line)."""
    options = [
        click.option("--since", metavar="TIME",
                     help="Start: ISO 8601 (local unless Z/+HH:MM), 'today', or a duration "
                          "back from now (2h)."),
        click.option("--until", metavar="TIME", help="End, like --since (default: the end "
                                                     "of the last selected batch job)."),
        click.option("--batch-job", "batch_job", metavar="ID", help="One batch job."),
        click.option("--user", metavar="NAME", help="Batch jobs run by this user."),
        click.option("--workflow", metavar="NAME", help="Tasks of this workflow."),
        click.option("--owner", metavar="NAME", help="Tasks created by this user."),
        click.option("--bin", "bin_text", metavar="DURATION",
                     help="Bin width: 10s, 5m, 1h … (default: about 60 bins)."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON."),
        click.option("--csv", "as_csv", is_flag=True, help="CSV rows."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def png_option(func: F) -> F:
    return click.option("--png", "png", metavar="FILE",
                        help="Also draw a plot into FILE (needs matplotlib).")(func)


def parse_filters(since: str | None, until: str | None, batch_job: str | None,
                  user: str | None, workflow: str | None, owner: str | None,
                  bin_text: str | None) -> Filters:
    from ..base.values import id_from_text, name
    from ..reports.history import Filters
    from ..reports.timefmt import parse_duration, parse_time

    job_id = None if batch_job is None else id_from_text("--batch-job", batch_job, "batch job")
    return Filters(
        since=parse_time(since, "--since") if since is not None else None,
        until=parse_time(until, "--until") if until is not None else None,
        batch_job=job_id,
        user=None if user is None else name("--user", user),
        workflow=None if workflow is None else name("--workflow", workflow),
        owner=None if owner is None else name("--owner", owner),
        bin_seconds=parse_duration(bin_text) if bin_text is not None else None,
    )


def check_png(png: str | None) -> str | None:
    """``--png FILE``: a path that can be written at all (checked before any query)."""
    if png is None:
        return None
    import os

    from ..base.values import text

    path = text("--png", png, 4096, empty=False)
    if os.path.isdir(path):
        raise UsageError(f"--png: {path} is a directory; name a file in it")
    return path


@contextlib.contextmanager
def connection(ctx: CliContext, filters: Filters | None = None
               ) -> Iterator[psycopg.Connection[Any]]:
    from ..base import db

    conn = db.connect(ctx.project(), application_name="balsam_mpi report")
    try:
        if filters is not None:
            note_unknown_owner(conn, filters)
        yield conn
    finally:
        conn.close()


def note_unknown_owner(conn: psycopg.Connection[Any], filters: Filters) -> None:
    """An ``--owner`` that names no role a task can have stays legal (the report is then
    empty, an honest answer), but a misspelt name reads like a quiet project: one line
    on stderr says so. One query of the roles (and, for a non-member, of the tasks)."""
    from ..tasks.owners import unknown_owners

    if filters.owner is None or not unknown_owners(conn, [filters.owner]):
        return
    echo(f"note: --owner {filters.owner!r}: no member of this project has that role and "
         "no task is owned by it", err=True)


def _one_format(as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise UsageError("choose one of --json and --csv")


def _wrote(path: Any) -> None:
    echo(f"wrote {path}", err=True)


@click.group("report")
def report() -> None:
    """Utilization, throughput, per-job figures and failures, from the task history."""


@report.command("utilization")
@selection_options
@png_option
@pass_ctx
def utilization(ctx: CliContext, /, as_json: bool, as_csv: bool, png: str | None,
                **selection: Any) -> None:
    """Busy node-fraction over time, per batch job and in total."""
    from ..reports import history
    from ..reports import render as render

    _one_format(as_json, as_csv)
    filters = parse_filters(**selection)
    check_png(png)
    with connection(ctx, filters) as conn:
        h = history.history(conn, filters)
    _emit(as_json, as_csv, lambda: render.utilization_payload(h),
          lambda: render.utilization_csv(h), lambda: render.utilization_text(h))
    if png:
        from ..reports.plot import plot_utilization

        _wrote(plot_utilization(h, png))


@report.command("throughput")
@selection_options
@png_option
@pass_ctx
def throughput(ctx: CliContext, /, as_json: bool, as_csv: bool, png: str | None,
               **selection: Any) -> None:
    """Runs done (and failed) per bin, and cumulative."""
    from ..reports import history
    from ..reports import render as render

    _one_format(as_json, as_csv)
    filters = parse_filters(**selection)
    check_png(png)
    with connection(ctx, filters) as conn:
        h = history.history(conn, filters)
    _emit(as_json, as_csv, lambda: render.throughput_payload(h),
          lambda: render.throughput_csv(h), lambda: render.throughput_text(h))
    if png:
        from ..reports.plot import plot_throughput

        _wrote(plot_throughput(h, png))


@report.command("jobs")
@selection_options
@png_option
@pass_ctx
def jobs(ctx: CliContext, /, as_json: bool, as_csv: bool, png: str | None,
         **selection: Any) -> None:
    """Per batch job: nodes, wall time, busy node-hours, utilization, runs done and
    failed, queue wait, time to first task, idle tail."""
    from ..reports import history
    from ..reports import render as render

    _one_format(as_json, as_csv)
    filters = parse_filters(**selection)
    check_png(png)
    with connection(ctx, filters) as conn:
        h = history.history(conn, filters)
    _emit(as_json, as_csv, lambda: render.jobs_payload(h),
          lambda: render.dicts_csv(h.job_rows()), lambda: render.jobs_text(h))
    if png:
        from ..reports.plot import plot_jobs

        _wrote(plot_jobs(h, png))


@report.command("failures")
@selection_options
@png_option
@click.option("--limit", "limit_text", default="50", show_default=True, metavar="N",
              help="At most this many groups.")
@pass_ctx
def failures(ctx: CliContext, /, as_json: bool, as_csv: bool, png: str | None,
             limit_text: str, **selection: Any) -> None:
    """Failed tasks grouped by app, state, exit code, host and first line of output."""
    from ..base.values import count_from_text

    limit = count_from_text("--limit", limit_text, 100_000)
    from ..reports import render as render
    from ..reports.tables import failures as load_failures

    _one_format(as_json, as_csv)
    filters = parse_filters(**selection)
    check_png(png)
    with connection(ctx, filters) as conn:
        result = load_failures(conn, filters, limit)
    groups = result["groups"]
    columns = ["tasks", "app", "state", "exit_code", "host", "first_line", "example_ids",
               "last_at"]

    def text() -> str:
        if not groups:
            return "no failed tasks"
        rows = [[g["tasks"], g["app"], g["state"], g["exit_code"], g["host"] or "-",
                 g["first_line"][:60], ",".join(map(str, g["example_ids"]))] for g in groups]
        return (f"{result['failed_tasks']} failed task(s) in {len(groups)} group(s)\n"
                + render.table(["tasks", "app", "state", "rc", "host", "first line of output",
                                "e.g. tasks"], rows))

    _emit(as_json, as_csv, lambda: result, lambda: render.dicts_csv(groups, columns), text)
    if png:
        from ..reports.plot import plot_failures

        _wrote(plot_failures(groups, png))


@report.command("usage")
@selection_options
@pass_ctx
def usage(ctx: CliContext, /, as_json: bool, as_csv: bool, **selection: Any) -> None:
    """Busy node-hours and runs by batch-job user (whose allocation), by task owner (whose
    work), by workflow, and by the pair."""
    from ..reports import render as render
    from ..reports.tables import usage as load_usage
    from ..reports.tables import usage_summary

    _one_format(as_json, as_csv)
    filters = parse_filters(**selection)
    with connection(ctx, filters) as conn:
        window, rows = load_usage(conn, filters)
    summary = usage_summary(rows)
    flat = [{"batch_job": r.job_id, "job_user": r.job_user, "owner": r.owner,
             "workflow": r.workflow, "busy_node_hours": r.node_seconds / 3600.0,
             "done": r.done, "failed": r.failed} for r in rows]

    def text() -> str:
        if not rows:
            return "no task ran in this range"
        parts = []
        for split, title in (("by_job_user", "job_user"), ("by_owner", "owner"),
                             ("by_workflow", "workflow")):
            items = summary[split]
            parts.append(render.table(
                [title, "busy node-h", "done", "failed"],
                [[i[title], i["busy_node_hours"], i["done"], i["failed"]]
                 for i in items]))
        pairs = summary["by_job_user_and_owner"]
        parts.append(render.table(
            ["job_user", "owner", "busy node-h", "done", "failed"],
            [[i["job_user"], i["owner"], i["busy_node_hours"], i["done"],
              i["failed"]] for i in pairs]))
        return "\n\n".join(parts)

    from ..reports.timefmt import iso

    _emit(as_json, as_csv,
          lambda: {"report": "usage", "since": iso(window.t0), "until": iso(window.t1),
                   **summary, "rows": flat},
          lambda: render.dicts_csv(flat), text)


@report.command("latency")
@selection_options
@pass_ctx
def latency(ctx: CliContext, /, as_json: bool, as_csv: bool, **selection: Any) -> None:
    """Seconds from ready to claimed, claimed to running, running to done (each task's
    latest run), and queued to started for submitted batch jobs."""
    from ..reports import render as render
    from ..reports.tables import latency as load_latency

    _one_format(as_json, as_csv)
    filters = parse_filters(**selection)
    with connection(ctx, filters) as conn:
        result = load_latency(conn, filters)
    stages = result["stages"]

    def text() -> str:
        from ..reports.timefmt import short_duration as d

        if not stages:
            return "no task ran in this range"
        every = result["sample_every"]
        note = (f"tasks: one in {every} by id (counts are of that sample)\n"
                if every > 1 else "")
        return note + render.table(["stage", "count", "mean", "p50", "p90", "p99", "max"],
                            [[s["stage"], s["count"], d(s["mean"]), d(s["p50"]),
                              d(s["p90"]), d(s["p99"]), d(s["max"])] for s in stages])

    _emit(as_json, as_csv, lambda: {"report": "latency", **result},
          lambda: render.dicts_csv(stages), text)


def _emit(as_json: bool, as_csv: bool, payload: Callable[[], Any],
          csv_text: Callable[[], str], text: Callable[[], str]) -> None:
    if as_json:
        echo_json(payload())
    elif as_csv:
        click.echo(for_stream(csv_text(), sys.stdout), nl=False)  # data down a pipe
    else:
        echo(text())


commands: list[click.Command] = [report]
