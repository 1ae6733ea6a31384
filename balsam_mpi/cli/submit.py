"""`balsam-mpi submit`: a launcher batch job for PBS Pro, Slurm, Cobalt, or this machine."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from ..base import limits
from ..base.clibase import echo, echo_json, signals_deferred
from ..base.termtext import for_stream
from .context import CliContext, pass_ctx
from .joboptions import job_options, job_request


@click.command("submit")
@job_options
@click.option("-n", "--nodes", "nodes_text", required=True, metavar="N",
              help="Nodes: one launcher rank each (local: ranks on this host).")
@click.option("--dry-run", is_flag=True, help="Print the script; write and submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the submission as JSON.")
@pass_ctx
def submit_command(ctx: CliContext, /, nodes_text: str, dry_run: bool, as_json: bool,
                   **job: Any) -> None:
    """Render a launcher job script into PROJECT/qsubmit/ and submit it.

    Templates come from PROJECT/job-templates/, then ~/.balsam/job-templates/, then those
    shipped with balsam_mpi. The batch job is recorded (QUEUED) and its launcher adopts
    the record when it starts. --workflow, --tag, --owner, --gpus-per-node,
    --idle-timeout and --persistent go to the launcher as its own flags.
    """
    from ..base import values
    from ..batch import submit

    nodes = values.int_from_text("--nodes", nodes_text, 1, limits.INT_RANGES["num_nodes"][1])
    req = job_request(nodes, **job)
    project = ctx.project()
    if dry_run:
        text = submit.dry_run(project, req)
        if as_json:  # nothing was recorded or written: no ids, no path
            echo_json({"dry_run": True, "scheduler": req.scheduler, "batch_job_id": None,
                       "script_text": text})
            return
        # The script as written: spelled out only on a terminal (termtext).
        click.echo(for_stream(text, sys.stdout), nl=False)
        return
    # Signals wait for the scheduler's answer: killed between the row and the id sbatch
    # printed, a submission would leave its job queued and its row without that id.
    with signals_deferred() as stop:
        done = submit.submit(project, req)
    if as_json:
        echo_json(done.as_dict())
    elif done.scheduler == "local":
        echo(f"started batch job {done.batch_job_id} on this host (pid {done.pid}); "
                   f"output: {done.log}; stop it with `kill -TERM {done.pid}`")
    else:
        echo(f"submitted batch job {done.batch_job_id} as {done.scheduler} job "
                   f"{done.scheduler_job_id}; script: {done.script}")
    if stop.is_set():
        name = signal.Signals(stop.signum).name
        echo(f"{name} came during the submission, which was finished first", err=True)
        sys.exit(128 + stop.signum)


commands: list[click.Command] = [submit_command]
