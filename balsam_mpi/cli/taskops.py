"""`task modify|kill|retry|rm|why` and `dep`: the commands that change tasks.

Each prints what the database did (its per-task outcome, migrations/0007), never how
many ids were asked about: the count changed on stdout, one line per reason on stderr
for the tasks left alone. When every task was left alone it is an error (exit 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..base.clibase import echo, echo_json
from .context import CliContext, pass_ctx
from .taskargs import filter_options, filters_from, task_id

if TYPE_CHECKING:
    from ..tasks.outcome import Outcome


def _report(outcome: Outcome, done_line: str) -> None:
    """The count done (stdout) and why the rest were left alone (stderr)."""
    from ..base.errors import BalsamError

    lines = outcome.refusal_lines()
    if not outcome and lines:
        raise BalsamError("; ".join(lines))
    echo(done_line)
    for line in lines:
        echo(line, err=True)


@click.command("modify")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Set a field (repeatable); VALUE is JSON when it parses, else text. "
                   "e.g. --set priority=5 --set 'tags={\"k\": \"v\"}'")
@click.option("--priority", default=None, metavar="N", help="Shorthand for --set priority=N.")
@click.option("--wall-time-min", default=None, metavar="MIN", help="Shorthand for --set.")
@click.option("--num-nodes", default=None, metavar="N", help="Shorthand for --set.")
@click.option("--node-packing-count", default=None, metavar="N", help="Shorthand for --set.")
@pass_ctx
def task_modify(ctx: CliContext, /, ids: tuple[str, ...], sets: tuple[str, ...],
                **shortcuts: Any) -> None:
    """Change fields of tasks that are not running (state: use kill / retry)."""
    from ..base.errors import InputError
    from ..tasks import files
    from ..tasks.validate import from_text

    changes = files.parse_sets(sets)
    for key, raw in shortcuts.items():
        if raw is None:
            continue
        if key in changes:  # as --set refuses a field set twice: which one was meant?
            raise InputError(f"{key}: given twice (--{key.replace('_', '-')} and "
                             f"--set {key}=…); give one")
        changes[key] = from_text(key, raw)
    wanted = [task_id(i) for i in ids]
    done = ctx.client().update(wanted, **changes)
    _report(done, f"modified {len(done)} tasks")


@click.command("kill")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@filter_options
@pass_ctx
def task_kill(ctx: CliContext, /, ids: tuple[str, ...], **opts: Any) -> None:
    """Kill tasks (by id or filter): USER_KILLED; waiting descendants fail."""
    killed = ctx.client().kill(**_ids_and_filters(ids, opts))
    _report(killed, f"killed {len(killed)} tasks")


@click.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@click.option("--failed", is_flag=True, help="Every FAILED task (with the other filters).")
@filter_options
@pass_ctx
def task_retry(ctx: CliContext, /, ids: tuple[str, ...], failed: bool, **opts: Any) -> None:
    """Run FAILED / USER_KILLED tasks again, with the descendants they failed."""
    if failed:
        opts["state"] = (*opts.get("state", ()), "FAILED")
    back = ctx.client().retry(**_ids_and_filters(ids, opts))
    _report(back, f"retried {len(back)} tasks (descendants included)")


@click.command("rm")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@filter_options
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_ctx
def task_rm(ctx: CliContext, /, ids: tuple[str, ...], yes: bool, **opts: Any) -> None:
    """Delete tasks (by id or filter); asks first unless --yes. A running or claimed task
    is deleted too, and its launcher stops it within seconds."""
    client = ctx.client()
    chosen = _ids_and_filters(ids, opts)
    found = [r["id"] for r in client.tasks(**chosen)]
    # Ids given alone that match no task go to the database too, which names each one
    # ("no such task") as kill and retry do; with a filter they are just not matched.
    missing = sorted(set(chosen["ids"]) - set(found)) if list(chosen) == ["ids"] else []
    if not found and not missing:
        echo("no tasks match", err=True)
        return
    if found and not yes:
        click.confirm(f"delete {len(found)} tasks?", abort=True, err=True)
    gone = client.delete(found + missing)
    stopping = sum(1 for word in gone.how.values() if "launcher" in word)
    note = f" ({stopping} were claimed or running: their launchers stop them)" \
        if stopping else ""
    _report(gone, f"deleted {len(gone)} tasks{note}")


@click.command("why")
@click.argument("tid", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of lines).")
@pass_ctx
def task_why(ctx: CliContext, /, tid: str, as_json: bool) -> None:
    """Why a task is not running (parents, state, batch jobs)."""
    lines = ctx.client().why(task_id(tid))
    if as_json:
        echo_json(lines)
    else:
        echo("\n".join(lines))


@click.command("dep")
@click.argument("parent")
@click.argument("child")
@pass_ctx
def dep(ctx: CliContext, parent: str, child: str) -> None:
    """Make task CHILD wait for task PARENT (cycles are refused)."""
    p, c = task_id(parent, "parent"), task_id(child, "child")
    if ctx.client().add_dependency(p, c):
        echo(f"task {c} now depends on task {p}")
    else:
        echo(f"task {c} already depended on task {p}")


def _ids_and_filters(ids: tuple[str, ...], opts: dict[str, Any]) -> dict[str, Any]:
    from ..base.errors import UsageError

    chosen = filters_from(opts, ids)
    if not chosen:
        raise UsageError("give task ids or a filter (--workflow, --state, --app, …)")
    return chosen


def register(group: click.Group) -> None:
    for command in (task_modify, task_kill, task_retry, task_rm, task_why):
        group.add_command(command)
