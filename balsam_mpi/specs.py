"""Claimed rows → the :class:`~balsam_mpi.protocol.TaskSpec` a node runs (leader side).

The leader renders argv once, here, so workers need neither the database nor the apps.
Rendering is cached per command when a task has no params or args (the no-op and sleep
ensembles that dominate throughput), because splitting a command line costs more than
the rest of a task's handling in the leader.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .project import Project
from .protocol import TaskSpec
from .resources import need_of
from .store import Claimed


def _render(command: str, params: dict[str, Any], args: list[str], shell: bool
            ) -> tuple[str, ...]:
    try:
        from .taskspec import render_argv
    except ImportError:  # pragma: no cover - before the tasks module existed
        import shlex

        if shell:
            return ("/bin/sh", "-c", " ".join([command, *map(shlex.quote, args)]))
        return tuple(t.format_map(params) for t in shlex.split(command)) + tuple(args)
    return tuple(render_argv(command, params, args, shell))


@lru_cache(maxsize=1024)
def _render_plain(command: str, shell: bool) -> tuple[str, ...]:
    return _render(command, {}, [], shell)


def render(command: str, params: dict[str, Any], args: list[str], shell: bool
           ) -> tuple[str, ...]:
    if not params and not args:
        return _render_plain(command, shell)
    return _render(command, params, args, shell)


def to_spec(row: Claimed, epoch: int, project: Project) -> TaskSpec:
    """Raises ValueError (a subclass of it) when the command cannot be rendered."""
    argv = render(row.command, row.params, list(row.args), row.shell)
    env = tuple((str(k), v if isinstance(v, str) else str(v)) for k, v in row.env.items())
    return TaskSpec(
        id=row.id, epoch=epoch, argv=argv,
        cwd=str(project.task_dir(row.workflow, row.id, row.name)), env=env,
        need=need_of(row.node_packing_count), wall_time_s=float(row.wall_time_min) * 60.0,
        threads=row.threads_per_rank, gpus=row.gpus_per_rank * row.ranks_per_node,
        env_script=row.env_script)
