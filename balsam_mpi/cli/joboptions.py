"""The options of a launcher batch job, shared by `balsam-mpi submit` and `autoscale`.

Both build a :class:`~balsam_mpi.batch.jobscript.JobRequest` the same way, from the same
flags checked by the same code, so a job the autoscaler submits is one `submit` could
have: ``@job_options`` adds the flags (all but the node count), :func:`job_request` reads
them back with every value checked (one line naming the flag, exit 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..base import limits
from ..base.platform import SCHEDULERS

if TYPE_CHECKING:
    from ..batch.jobscript import JobRequest

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option("--scheduler", type=click.Choice(SCHEDULERS), required=True,
                 help="pbs (PBS Pro, mpiexec), slurm (srun), cobalt (aprun; legacy), or "
                      "local."),
    click.option("-t", "--wall-time-min", "wall_text", metavar="MIN",
                 help="Wall time in minutes (required except for local)."),
    click.option("-q", "--queue", help="Queue (PBS, Cobalt) or QOS (Slurm)."),
    click.option("-A", "--account", help="Allocation to charge."),
    click.option("--workflow", "workflows", multiple=True, metavar="W",
                 help="Run only tasks of this workflow (repeat for several)."),
    click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
                 help="Run only tasks with this tag (repeat: all of them)."),
    click.option("--owner", "owners", multiple=True, metavar="ROLE",
                 help="Run only tasks created by this role (repeat for several)."),
    click.option("--gpus-per-node", "gpus_text", metavar="N",
                 help="GPUs the launcher hands out on each node (one task per device)."),
    click.option("--idle-timeout", "idle_text", metavar="S",
                 help="The launcher ends after S seconds with nothing to run (default 10)."),
    click.option("--persistent", is_flag=True,
                 help="The launcher never ends for lack of work (only at its time limit)."),
    click.option("--directive", "directives", multiple=True, metavar="LINE",
                 help="Extra header line, e.g. '-l place=scatter' (prefixed with #PBS, "
                      "#SBATCH or #COBALT unless it is)."),
    click.option("--filesystems", help="Filesystems the job needs (PBS -l filesystems=, "
                 "Slurm --licenses=, Cobalt --attrs filesystems=)."),
    click.option("--job-name", default="balsam", show_default=True),
    click.option("--margin-min", "margin_text", metavar="MIN",
                 help="Minutes between the launcher's time limit and the wall time "
                      "(default: 5% of it, 1 to 10). Slurm's warning signal comes 60 s less "
                      "before the end, if that leaves a drain."),
    click.option("--shared-nodes", is_flag=True,
                 help="Slurm: do not ask for whole nodes (#SBATCH --exclusive is left out); "
                      "the job then holds only the CPUs Slurm gives it."),
]


def job_options(command: F) -> F:
    """Add the job's flags to ``command`` (in the order --help lists them)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def job_request(nodes: int, *, scheduler: str, wall_text: str | None, queue: str | None,
                account: str | None, workflows: tuple[str, ...], tags: tuple[str, ...],
                owners: tuple[str, ...], gpus_text: str | None, idle_text: str | None,
                persistent: bool, directives: tuple[str, ...], filesystems: str | None,
                job_name: str, margin_text: str | None, shared_nodes: bool) -> JobRequest:
    """The request the flags describe, each value checked as the launcher checks it."""
    from ..base import values
    from ..batch.jobscript import JobRequest
    from ..launcher.config import RANGES

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
    # The launcher's own ranges (launcher/config.py); jobscript.validate() checks the
    # tags, the owners and the rest as the launcher will.
    gpus = None if gpus_text is None else values.int_from_text(
        "--gpus-per-node", gpus_text, *map(int, RANGES["gpus_per_node"]))
    idle = None if idle_text is None else values.number_from_text(
        "--idle-timeout", idle_text, *RANGES["idle_timeout_s"])
    for line in directives:
        values.text("--directive", line, 4096)
    return JobRequest(scheduler=scheduler, nodes=nodes, wall_time_min=wall_time_min,
                      queue=queue, account=account, workflows=workflows,
                      directives=directives, filesystems=filesystems, job_name=job_name,
                      margin_min=margin_min, whole_nodes=not shared_nodes, tags=tags,
                      owners=owners, gpus_per_node=gpus, idle_timeout_s=idle,
                      persistent=persistent)
