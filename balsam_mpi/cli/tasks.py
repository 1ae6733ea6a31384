"""`balsam-mpi task add|ls|show|…`, `dep` and `ls`: tasks from the shell.

Values arrive as text and are checked by tasks/validate.py, so a bad one is one line naming the
field (not click's usage block). Changing commands live in taskops.py.
"""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
from typing import Any

import click

from ..base.clibase import Group, echo, echo_json, echo_json_list
from ..base.termtext import visible
from . import taskout, taskwait
from .context import CliContext, pass_ctx
from .table import echo_table
from .taskargs import count, filter_options, filters_from, task_id
from .taskops import dep, register

# flag name -> field, for the resource and retry flags shared by `task add`.
_SCALARS = ("num_nodes", "ranks_per_node", "threads_per_rank", "gpus_per_rank",
            "node_packing_count", "wall_time_min", "priority", "error_retry_limit",
            "timeout_retry_limit", "lost_retry_limit")


@click.group("task", cls=Group)
def task() -> None:
    """Tasks: add, list, show, out, modify, kill, retry, delete, explain, wait."""


def _scalar_options(fn: Any) -> Any:
    for field in reversed(_SCALARS):
        fn = click.option(f"--{field.replace('_', '-')}", field, default=None,
                          metavar="N", help=f"The task's {field}.")(fn)
    return fn


@task.command("add")
@click.option("--app", default=None, help="The app to run.")
@click.option("--workflow", default=None, help="The workflow tag (exact).")
@click.option("--name", default=None, help="The task's name.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Fill the app's {KEY} placeholder (repeatable).")
@click.option("--arg", "args", multiple=True, help="Append an argument (repeatable).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE",
              help="An environment variable (repeatable).")
@click.option("--input-file", "input_files", multiple=True, metavar="GLOB",
              help="Link files matching GLOB from the parents' directories (repeatable).")
@click.option("--parent", "parents", multiple=True, metavar="ID",
              help="Wait for task ID to finish (repeatable).")
@click.option("--fail-with-parents/--no-fail-with-parents", default=None,
              help="Fail when a parent fails (default) or run anyway.")
@_scalar_options
@click.option("--from-file", "from_file", default=None, metavar="PATH",
              help="Many tasks: JSON lines or CSV ('-' for stdin); flags fill missing fields.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default=None,
              help="Format of --from-file (default: by suffix; stdin: jsonl).")
@click.option("--json", "as_json", is_flag=True, help="Print the new ids as JSON.")
@pass_ctx
def task_add(ctx: CliContext, /, from_file: Any, fmt: str | None, as_json: bool,
             **flags: Any) -> None:
    """Add one task from flags, or many from a file (all or nothing)."""
    from ..tasks import taskfile

    fields = _fields_from_flags(flags)
    if from_file is None:
        ids = _add_records(ctx, [fields], [""])
    else:
        tasks_file = taskfile.open_task_file(from_file, fmt, fields)
        try:
            ids = _add_file(ctx, tasks_file)
        finally:
            tasks_file.close()
    if as_json:
        echo_json(list(ids))
    elif len(ids) == 1:
        echo(f"added task {ids[0]}")
    else:
        # Ids come back in input order, but parents get the smaller ids (a child-first
        # file would otherwise print "(11…10)"): show the range the batch took.
        echo(f"added {len(ids)} tasks" + (f" ({min(ids)}…{max(ids)})" if ids else ""))


def _add_records(ctx: CliContext, records: list[dict[str, Any]],
                 labels: list[str]) -> list[int]:
    from .. import task_api

    if task_api.inside_task():
        # Inside a launcher's task: through the launcher, which writes them with its own
        # connection (docs/mpi-tasks.md), not one connection per task.
        return task_api.add_tasks(records)
    return ctx.client().add_tasks(records, labels=labels, progress=_progress(len(records)))


def _add_file(ctx: CliContext, tasks_file: Any) -> Any:
    """A file's tasks: read twice (checked, then written chunk by chunk), never held
    whole (tasks/streamed.py). Inside a launcher's task, whose adds go through the
    launcher as one message, checked and sized first (at most one request's worth)."""
    from .. import task_api
    from ..tasks import taskfile

    if task_api.inside_task():
        return task_api.add_tasks(taskfile.for_one_request(tasks_file,
                                                           task_api.MAX_REQUEST))
    return ctx.client().add_task_file(tasks_file, progress_for=_progress)


def _fields_from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The task fields the flags give, each parsed by its field's type (validate.from_text):
    the same text rules as a CSV cell."""
    from ..tasks import files
    from ..tasks.validate import from_text

    out: dict[str, Any] = {}
    for key in ("app", "workflow", "name"):
        if flags[key] is not None:
            out[key] = flags[key]
    for key in _SCALARS:
        if flags[key] is not None:
            out[key] = from_text(key, flags[key])
    if flags["fail_with_parents"] is not None:
        out["fail_with_parents"] = flags["fail_with_parents"]
    if flags["params"]:
        out["params"] = files.parse_pairs(flags["params"], "params")
    if flags["tags"]:
        out["tags"] = files.parse_pairs(flags["tags"], "tags")
    if flags["env"]:
        out["env"] = files.parse_pairs(flags["env"], "env")
    for name in ("args", "input_files"):
        if flags[name]:
            out[name] = list(flags[name])
    if flags["parents"]:
        out["parents"] = [task_id(p, "parents") for p in flags["parents"]]
    return out


def _progress(total: int) -> Any:
    if total < 20000 or not sys.stderr.isatty():
        return None
    bar = click.progressbar(length=total, label="adding tasks", file=sys.stderr)
    done = [0]

    def update(n: int) -> None:
        bar.update(n - done[0])
        done[0] = n
        if n >= total:
            bar.render_finish()

    return update


LS_COLUMNS = ["ID", "WORKFLOW", "NAME", "APP", "STATE", "NODES", "WALL", "PRIO", "OWNER"]


@task.command("ls")
@filter_options
@click.option("--limit", default="1000", metavar="N", help="At most N tasks (default 1000).")
@click.option("--sort", "sort", default="id", metavar="FIELD",
              help="Sort by FIELD ('-FIELD' descending): id, priority, state, created_at…")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def task_ls(ctx: CliContext, /, limit: str, sort: str, as_json: bool, **opts: Any) -> None:
    """List tasks (filters combine; repeated ones mean any of them)."""
    from ..base.limits import ID_MAX
    from ..base.values import name

    n = count(limit, "limit")
    sort = name("sort", sort)
    # one row more, to say there are more: within the client's cap at the largest --limit
    found = ctx.client().tasks(order=sort, limit=min(n + 1, ID_MAX - 1),
                               **filters_from(opts))
    # Rows are printed as the pages come (tasks() is lazy by id), never all held at once.
    rows = itertools.islice(found, n)
    if as_json:
        echo_json_list(rows)
    else:
        echo_table(LS_COLUMNS, ([r["id"], r["workflow"], r["name"], r["app"], r["state"],
                                 r["num_nodes"] if r["node_packing_count"] == 1
                                 else f"1/{r['node_packing_count']}",
                                 f"{r['wall_time_min']:g}", r["priority"], r["owner"]]
                                for r in rows), empty="no tasks match")
    if next(found, None) is not None:
        echo(f"(first {n} shown; use --limit for more)", err=True)


def _shown(key: str, value: Any) -> str:
    """A field of ``task show``, on its line. Any member's text (a state message, a
    Python call's returned string) has its newlines spelled out, so it cannot print a
    line that reads as another field; the output tail, lines by nature, is indented
    under its label. A result is shown as the JSON stored: the string "3" and the
    number 3 differ."""
    if key == "result" and value is not None:
        return visible(json.dumps(value, ensure_ascii=False), newlines=False)
    if key == "output_tail" and value:
        return "\n" + textwrap.indent(str(value), " " * 22, lambda _line: True)
    return visible(str(value), newlines=False)


@task.command("show")
@click.argument("tid", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def task_show(ctx: CliContext, /, tid: str, as_json: bool) -> None:
    """Every field of a task, its parents, children and history."""
    row = ctx.client().get(task_id(tid))
    if as_json:
        echo_json(row)
        return
    history = row.pop("history")
    for key, value in row.items():
        echo(f"{key:>20}: {_shown(key, value)}")
    echo("history:")
    for ev in history:
        frm = ev["from_state"] or "-"
        msg = f"  {ev['message']}" if ev["message"] else ""
        job = f" (batch job {ev['batch_job_id']})" if ev["batch_job_id"] else ""
        echo(f"  {ev['at']:%Y-%m-%d %H:%M:%S.%f}  {frm} -> {ev['to_state']}"
                   f"  by {ev['actor']}{job}{msg}")


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def counts(ctx: CliContext, as_json: bool) -> None:
    """Task counts by workflow and state."""
    by_wf = ctx.client().counts()
    if as_json:
        echo_json(by_wf)
        return
    from ..tasks.states import TaskState

    present = {s for states in by_wf.values() for s in states}
    cols = [s.value for s in TaskState if s.value in present]
    rows = [[wf, *(states.get(c, "") for c in cols), sum(states.values())]
            for wf, states in by_wf.items()]
    if len(rows) > 1:
        rows.append(["(all)", *(sum(s.get(c, 0) for s in by_wf.values()) for c in cols),
                     sum(sum(s.values()) for s in by_wf.values())])
    echo_table(["WORKFLOW", *cols, "TOTAL"], rows, empty="no tasks yet")


register(task)  # modify, kill, retry, rm, why
taskwait.register(task)  # wait
taskout.register(task)  # out

commands: list[click.Command] = [task, dep, counts]
