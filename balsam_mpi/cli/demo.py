"""`balsam-mpi demo`: make a fresh project, run a small mixed workload, summarize, stop."""

from __future__ import annotations

import sys

import click

from ..base.errors import BalsamError, UsageError


@click.command("demo")
@click.option("--tasks", "n_tasks", default="200", show_default=True, metavar="N",
              help="How many tasks (a three-task DAG, a 2-node MPI task with 3 ranks or more, "
                   "a task that adds tasks, the rest no-ops and short sleeps).")
@click.option("--ranks", default="4", show_default=True, metavar="R",
              help="MPI ranks of the launcher (one node each; rank 0 also leads).")
@click.option("--project", "project_path", metavar="P",
              help="Where to create the project (default: a fresh directory in /tmp).")
def demo(n_tasks: str, ranks: str, project_path: str | None) -> None:
    """Create a project, add tasks, run `mpiexec -n R python -m balsam_mpi`, report."""
    from ..base import values
    from ..dbctl import lifecycle
    from ..demo import run as d

    tasks = values.int_from_text("--tasks", n_tasks, -(2**63), 1_000_000)
    if tasks < 3:
        raise UsageError("--tasks must be at least 3 (the DAG alone has three)")
    n_ranks = values.int_from_text("--ranks", ranks, 1, 256)  # on this host
    tty = sys.stdout.isatty()

    def progress(line: str) -> None:
        if tty:
            click.echo("\r" + line.ljust(72), nl=not line)

    project = d.make_project(project_path, click.echo)
    try:
        total = d.populate(project, tasks, n_ranks)
        workflows = sorted({t["workflow"] for t in d.workload(tasks, n_ranks)})
        click.echo(f"added {total} tasks in workflows {', '.join(workflows)}")
        rc = d.run_launcher(project, n_ranks, total, click.echo, progress)
        if rc != 0:
            click.echo(f"the launcher exited with status {rc}; its logs are in "
                       f"{project.log_dir}", err=True)
        summary = d.summarize(project)
        d.report(summary, click.echo)
        left = d.unfinished(summary.counts)
        if rc == 0 and left:
            rc = 1
            click.echo("not every task finished (" + ", ".join(
                f"{state} {n}" for state, n in sorted(left.items())) + f"); the launcher's "
                f"logs are in {project.log_dir}", err=True)
    finally:
        try:
            lifecycle.stop_server(project, fast=True)
        except BalsamError as exc:
            click.echo(f"could not stop the server: {exc}", err=True)
    d.next_steps(project, click.echo, n_ranks)
    if rc != 0:
        sys.exit(1)


commands: list[click.Command] = [demo]
