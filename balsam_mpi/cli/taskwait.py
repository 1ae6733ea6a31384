"""`balsam-mpi task wait [ID...] [filters]`: block until tasks end, for shell scripts.

The tasks are the ids given, or those the filters of `task ls` match when the wait starts
(both: the ids the filters keep), so a script can fan out a workflow and wait for it
whole; tasks added after the start are not waited for.

Driven by LISTEN/NOTIFY (tasks/waiting.py): it reads the tasks' states once, then sleeps until
the database says one of them ended. One line per task as it ends; the exit status says
how they ended: 0 all JOB_FINISHED, 1 some FAILED or USER_KILLED, 3 the timeout passed
first, 4 a task does not exist (an unknown id, or one deleted while waiting), 5 the wait
could not be made (the server away, a refusal, a database error), 2 bad input. A task
that is not there, or not heard of, has neither finished nor failed: a script that
retries failures must not retry a mistyped id or rerun work because the server was away.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import click

from ..base.clibase import echo, echo_json
from ..base.errors import (
    BalsamError,
    DatabaseError,
    InputError,
    NotFound,
    PermissionDenied,
    ServerError,
    UsageError,
)
from ..tasks.waiting import describe
from .context import CliContext, pass_ctx
from .taskargs import filter_options, filters_from


class TaskMissing(NotFound):
    """`task wait`'s NotFound, with an exit status of its own."""

    exit_code = 4


class WaitFailed(BalsamError):
    """The wait could not be made: no outcome to report, good or bad."""

    exit_code = 5


def _timeout(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"timeout: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"timeout: must be a number of seconds ≥ 0, got {text!r}")
    return value


@click.command("wait")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@filter_options
@click.option("--timeout", default=None, metavar="S",
              help="Give up after S seconds (exit status 3).")
@click.option("--json", "as_json", is_flag=True,
              help="Print every outcome (with results) as JSON at the end.")
@click.option("--quiet", is_flag=True,
              help="No line per task: one at the end, how many ended in each state.")
@pass_ctx
def task_wait(ctx: CliContext, /, ids: tuple[str, ...], timeout: str | None,
              as_json: bool, quiet: bool, **opts: Any) -> None:
    """Wait until tasks (by id or filter) end: exit 0 if all finished, 1 if any failed or
    was killed, 3 on the timeout, 4 if a task does not exist, 5 if the wait could not be
    made (server away, refused)."""
    chosen = filters_from(opts, ids)
    if not chosen:
        raise UsageError("give task ids or a filter (--workflow, --state, --app, …)")
    limit = _timeout(timeout)
    outcomes = []
    try:
        # Inside the try: a server away before the wait started is a wait not made (5),
        # not a failed task (1).
        client = ctx.client()
        wanted = chosen["ids"] if list(chosen) == ["ids"] else client.ids(**chosen)
        if not wanted:
            raise TaskMissing("no task matches the ids and filters given")
        for outcome in client.as_completed(wanted, timeout=limit):
            outcomes.append(outcome)
            if not as_json and not quiet:
                echo(describe(outcome))
    except TaskMissing:
        raise
    except NotFound as exc:
        raise TaskMissing(str(exc)) from exc
    except (ServerError, PermissionDenied, DatabaseError) as exc:
        raise WaitFailed(f"could not wait: {exc}") from exc
    if as_json:
        by_id = {o.id: o for o in outcomes}
        echo_json([by_id[i]._asdict() for i in dict.fromkeys(wanted)])
    elif quiet:
        states = Counter(o.state for o in outcomes)
        echo(f"{len(outcomes)} task{'s' * (len(outcomes) != 1)} ended: "
                   + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
    if not all(o.ok for o in outcomes):
        click.get_current_context().exit(1)


def register(group: click.Group) -> None:
    group.add_command(task_wait)
