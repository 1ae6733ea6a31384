"""`balsam-mpi submit`: a launcher batch job for PBS Pro, Slurm, Cobalt, or this machine."""

from __future__ import annotations

import sys

import click

from ..base import limits
from ..base.clibase import echo, echo_json
from ..base.platform import SCHEDULERS
from ..base.termtext import for_stream
from .context import CliContext, pass_ctx


@click.command("submit")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), required=True,
              help="pbs (PBS Pro, mpiexec), slurm (srun), cobalt (aprun; legacy), or local.")
@click.option("-n", "--nodes", "nodes_text", required=True, metavar="N",
              help="Nodes: one launcher rank each (local: ranks on this host).")
@click.option("-t", "--wall-time-min", "wall_text", metavar="MIN",
              help="Wall time in minutes (required except for local).")
@click.option("-q", "--queue", help="Queue (PBS, Cobalt) or QOS (Slurm).")
@click.option("-A", "--account", help="Allocation to charge.")
@click.option("--workflow", "workflows", multiple=True, metavar="W",
              help="Run only tasks of this workflow (repeat for several).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="Run only tasks with this tag (repeat: all of them).")
@click.option("--owner", "owners", multiple=True, metavar="ROLE",
              help="Run only tasks created by this role (repeat for several).")
@click.option("--gpus-per-node", "gpus_text", metavar="N",
              help="GPUs the launcher hands out on each node (one task per device).")
@click.option("--idle-timeout", "idle_text", metavar="S",
              help="The launcher ends after S seconds with nothing to run (default 10).")
@click.option("--persistent", is_flag=True,
              help="The launcher never ends for lack of work (only at its time limit).")
@click.option("--directive", "directives", multiple=True, metavar="LINE",
              help="Extra header line, e.g. '-l place=scatter' (prefixed with #PBS, "
                   "#SBATCH or #COBALT unless it is).")
@click.option("--filesystems", help="Filesystems the job needs (PBS -l filesystems=, "
              "Slurm --licenses=, Cobalt --attrs filesystems=).")
@click.option("--job-name", default="balsam", show_default=True)
@click.option("--margin-min", "margin_text", metavar="MIN",
              help="Minutes between the launcher's time limit and the wall time "
                   "(default: 5% of it, 1 to 10). Slurm's warning signal comes 60 s less "
                   "before the end, if that leaves a drain.")
@click.option("--shared-nodes", is_flag=True,
              help="Slurm: do not ask for whole nodes (#SBATCH --exclusive is left out); "
                   "the job then holds only the CPUs Slurm gives it.")
@click.option("--dry-run", is_flag=True, help="Print the script; write and submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the submission as JSON.")
@pass_ctx
def submit_command(ctx: CliContext, scheduler: str, nodes_text: str, wall_text: str | None,
                   queue: str | None, account: str | None, workflows: tuple[str, ...],
                   tags: tuple[str, ...], owners: tuple[str, ...], gpus_text: str | None,
                   idle_text: str | None, persistent: bool,
                   directives: tuple[str, ...], filesystems: str | None, job_name: str,
                   margin_text: str | None, shared_nodes: bool, dry_run: bool,
                   as_json: bool) -> None:
    """Render a launcher job script into PROJECT/qsubmit/ and submit it.

    Templates come from PROJECT/job-templates/, then ~/.balsam/job-templates/, then those
    shipped with balsam_mpi. The batch job is recorded (QUEUED) and its launcher adopts
    the record when it starts. --workflow, --tag, --owner, --gpus-per-node,
    --idle-timeout and --persistent go to the launcher as its own flags.
    """
    from ..base import values
    from ..batch import submit
    from ..batch.jobscript import JobRequest
    from ..launcher.config import RANGES

    nodes = values.int_from_text("--nodes", nodes_text, 1, limits.INT_RANGES["num_nodes"][1])
    wall_time_min = None if wall_text is None else values.int_from_text(
        "--wall-time-min", wall_text, 1, int(limits.WALL_TIME_MIN_MAX))
    margin_min = None if margin_text is None else values.number_from_text(
        "--margin-min", margin_text, 0.0, limits.WALL_TIME_MIN_MAX)
    for flag, given, cap in (("--queue", queue, limits.NAME_MAX),
                             ("--account", account, limits.NAME_MAX),
                             ("--filesystems", filesystems, 4096),
                             ("--job-name", job_name, limits.NAME_MAX)):
        if given is not None:
            values.text(flag, given, cap)
    for w in workflows:
        values.name("--workflow", w)
    # The launcher's own ranges (launcher/config.py); validate() checks the tags, the
    # owners and the rest as the launcher will.
    gpus = None if gpus_text is None else values.int_from_text(
        "--gpus-per-node", gpus_text, *map(int, RANGES["gpus_per_node"]))
    idle = None if idle_text is None else values.number_from_text(
        "--idle-timeout", idle_text, *RANGES["idle_timeout_s"])
    for line in directives:
        values.text("--directive", line, 4096)

    req = JobRequest(scheduler=scheduler, nodes=nodes, wall_time_min=wall_time_min,
                     queue=queue, account=account, workflows=workflows,
                     directives=directives, filesystems=filesystems, job_name=job_name,
                     margin_min=margin_min, whole_nodes=not shared_nodes, tags=tags,
                     owners=owners, gpus_per_node=gpus, idle_timeout_s=idle,
                     persistent=persistent)
    project = ctx.project()
    if dry_run:
        # The script as written: spelled out only on a terminal (termtext).
        click.echo(for_stream(submit.dry_run(project, req), sys.stdout), nl=False)
        return
    done = submit.submit(project, req)
    if as_json:
        echo_json(done.as_dict())
    elif done.scheduler == "local":
        echo(f"started batch job {done.batch_job_id} on this host (pid {done.pid}); "
                   f"output: {done.log}; stop it with `kill -TERM {done.pid}`")
    else:
        echo(f"submitted batch job {done.batch_job_id} as {done.scheduler} job "
                   f"{done.scheduler_job_id}; script: {done.script}")


commands: list[click.Command] = [submit_command]
