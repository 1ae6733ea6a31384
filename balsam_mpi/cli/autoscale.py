"""`balsam-mpi autoscale`: submit launcher jobs while runnable work waits (batch/elastic.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from ..base.clibase import echo, signals_deferred
from ..base.errors import BalsamError, UsageError
from .context import CliContext, pass_ctx
from .joboptions import job_options, job_request

INTERVAL_S = 60.0
FAILED_LOOKS_CAP_S = 3600.0  # the longest wait after failed looks (unless --interval is)


@click.command("autoscale")
@job_options
@click.option("-n", "--max-nodes", "max_text", required=True, metavar="N",
              help="The largest job to submit, in nodes.")
@click.option("--min-nodes", "min_text", default="1", show_default=True, metavar="N",
              help="The smallest job to submit.")
@click.option("--max-queued", "queued_text", default="1", show_default=True, metavar="K",
              help="Jobs of these filters waiting in the queue at once, at most.")
@click.option("--max-total-nodes", "total_text", metavar="N",
              help="Nodes of these filters' queued and running jobs together, at most "
                   "(default: no limit beyond --max-queued).")
@click.option("--interval", "interval_text", default=str(int(INTERVAL_S)),
              show_default=True, metavar="S", help="Seconds between looks at the backlog.")
@click.option("--once", is_flag=True, help="Look once, submit at most one job, and exit.")
@click.option("--dry-run", is_flag=True,
              help="Say what would be closed and submitted; change nothing (implies --once).")
@pass_ctx
def autoscale_command(ctx: CliContext, /, max_text: str, min_text: str, queued_text: str,
                      total_text: str | None, interval_text: str, once: bool,
                      dry_run: bool, **job: Any) -> None:
    """Submit launcher jobs while runnable work waits for them.

    Every --interval seconds: close your QUEUED batch jobs the scheduler has ended, read
    the runnable tasks no launcher holds that these filters select (in nodes), and submit
    one job for what the jobs already queued do not cover — at least --min-nodes and what
    the widest task needs (w + 1 nodes for a task of w > 1: it runs on the job's workers),
    at most --max-nodes — unless --max-queued jobs wait already or
    --max-total-nodes would be passed. The jobs are those `balsam-mpi submit` makes with
    the same flags; their launchers end when the work runs out (--idle-timeout).
    Stop it with Ctrl-C or SIGTERM.
    """
    from ..base import limits, values
    from ..batch import elastic, jobscript

    top = limits.INT_RANGES["num_nodes"][1]
    max_nodes = values.int_from_text("--max-nodes", max_text, 1, top)
    min_nodes = values.int_from_text("--min-nodes", min_text, 1, top)
    if min_nodes > max_nodes:
        raise UsageError(f"--min-nodes {min_nodes} is more than --max-nodes {max_nodes}")
    scaling = elastic.Scaling(
        max_nodes=max_nodes, min_nodes=min_nodes,
        max_queued=values.int_from_text("--max-queued", queued_text, 1, 1000),
        max_total_nodes=None if total_text is None else values.int_from_text(
            "--max-total-nodes", total_text, 1, top))
    if scaling.max_total_nodes is not None and scaling.max_total_nodes < min_nodes:
        # Every job would pass the total: the autoscaler would wait for ever.
        raise UsageError(f"--max-total-nodes {scaling.max_total_nodes} is less than "
                         f"--min-nodes {min_nodes}: no job would ever fit")
    interval = values.number_from_text("--interval", interval_text, 1.0, 86_400.0)
    if job["persistent"]:
        raise UsageError("--persistent: a launcher that never ends for lack of work would "
                         "hold its nodes after the backlog is gone; autoscaled jobs end "
                         "when idle (--idle-timeout)")
    req = job_request(max_nodes, **job)
    jobscript.validate(req)  # every flag checked before the first look
    project = ctx.project()
    # Signals wait for the end of a look, --once's too: killed between its row and the
    # id sbatch printed, a submission would leave a QUEUED row no sync can close.
    with signals_deferred() as stop:
        if once or dry_run:
            _say(elastic.tick(project, req, scaling, dry_run=dry_run), dry_run, _Said())
            return
        said = _Said()
        looks(lambda: _say(elastic.tick(project, req, scaling), False, said), stop,
              interval, echo)


def looks(look: Callable[[], None], stop: threading.Event, interval: float,
          say: Callable[[str], None]) -> None:
    """Look every ``interval`` seconds until ``stop`` is set. A look that fails (the
    database away, a scheduler that refuses the job) is said, and the wait before the
    next doubles with each failure in a row, up to FAILED_LOOKS_CAP_S: a refusal that
    will not change (a wrong account) then costs a FAILED row and a script an hour,
    not one a minute; the first good look brings the interval back."""
    from ..base.pacing import Backoff

    retry = Backoff(interval, max(interval, FAILED_LOOKS_CAP_S))
    failed = 0
    while not stop.is_set():
        try:
            look()
        except BalsamError as exc:
            failed += 1
            pause = retry.failed()
            row = f" ({failed} looks in a row)" if failed > 1 else ""
            say(f"{_now()} this look failed{row}: {exc}; trying again in {pause:g} s")
        else:
            failed = 0
            retry.reset()
            pause = interval
        stop.wait(pause)


@dataclass
class _Said:
    """What a run has printed already: rows named as unaskable, and the last decision
    (a look that decides what the last one did, with the same figures, prints nothing;
    a quiet backlog is one line, not one a minute)."""

    unasked: set[int] = field(default_factory=set)
    last: str = ""


def _say(result: Any, dry_run: bool, said: _Said) -> None:
    """One line per closed row and per decision that differs from the last."""
    from ..batch import jobsync

    verb = "would close" if dry_run else "closed"
    for job, what in result.synced.found:
        echo(f"{_now()} batch job {job.id}: {what}")
    for job, reason in result.synced.closed:
        echo(f"{_now()} {verb} batch job {job.id} ({jobsync.named(job)}): {reason}")
    for job, why in result.synced.unasked:
        if job.id not in said.unasked:
            said.unasked.add(job.id)
            echo(f"{_now()} batch job {job.id} stays QUEUED: {why}")
    line = result.decision.why
    if result.backlog.too_wide:
        line += (f"; {result.backlog.too_wide:,} runnable tasks are wider than --max-nodes "
                 "and wait for another job")
    if result.backlog.too_long:
        line += (f"; {result.backlog.too_long:,} runnable tasks ask for more wall time than "
                 "these jobs' launchers have (-t less the margin) and wait for another job")
    done = result.submitted
    if done is not None:
        line += (f": batch job {done.batch_job_id}" + (
            f" ({done.scheduler} job {done.scheduler_job_id})" if done.scheduler_job_id
            else f" (pid {done.pid})"))
    elif dry_run and result.decision.nodes:
        line += " (dry run: nothing submitted)"
    if line != said.last or done is not None:
        echo(f"{_now()} {line}")
    said.last = line


def _now() -> str:
    return time.strftime("%H:%M:%S")


commands: list[click.Command] = [autoscale_command]
