"""Claimed rows → the :class:`~balsam_mpi.protocol.TaskSpec` a node runs (leader side).

The leader renders argv once, here, so workers need neither the database nor the apps.
Rendering is cached per command when a task has no params or args (the no-op and sleep
ensembles that dominate throughput), because splitting a command line costs more than
the rest of a task's handling in the leader.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from .appinfo import AppCache
from .mpilaunch import needs_prefix
from .project import Project
from .protocol import TaskSpec
from .resources import NODE_CAPACITY, need_of
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


class SpecBuilder:
    """Builds specs for one leader; caches the per-workflow and per-name path parts.

    The directory is exactly ``Project.task_dir`` (data/<workflow>/<id // 1000>/<name>_<id>),
    computed through it once per (workflow, name) and then by string joins: pathlib cost
    more per task than everything else the leader does.
    """

    def __init__(self, project: Project, epoch: int) -> None:
        self.project = project
        self.epoch = epoch
        self._wf: dict[str, str] = {}
        self._leaf: dict[str, str] = {}
        self.apps = AppCache()  # filled after each claim, on the database thread

    def cwd(self, workflow: str, task_id: int, name: str) -> str:
        wf = self._wf.get(workflow)
        if wf is None:
            wf = self._wf[workflow] = str(self.project.task_dir(workflow, 0, "x").parent.parent)
        prefix = self._leaf.get(name)
        if prefix is None:
            # task_dir's leaf is the path-safe form of f"{name}_{id}" (or of the id alone);
            # digits are safe, so it is the safe form of the name's part plus the id.
            prefix = self._leaf[name] = (
                self.project.task_dir(workflow, 0, name).name[:-1] if name else "")
        return f"{wf}/{task_id // 1000}/{prefix}{task_id}"

    def build(self, row: Claimed) -> TaskSpec:
        """Raises TaskSpecError / ValueError when the command cannot be rendered."""
        pp = self.apps.get(row.app)
        if pp.python:
            return self._python(row, pp.python)
        params = _json(row.params)
        env_map = _json(row.env)
        argv = render(row.command, params, list(row.args), row.shell)
        env = tuple((str(k), v if isinstance(v, str) else str(v)) for k, v in env_map.items())
        # A multi-rank task is its own MPI job on whole nodes (DESIGN.md §5).
        multi = needs_prefix(row.num_nodes, row.ranks_per_node)
        return TaskSpec(
            row.id, self.epoch, argv, self.cwd(row.workflow, row.id, row.name), env,
            NODE_CAPACITY if multi else need_of(row.node_packing_count),
            float(row.wall_time_min) * 60.0,
            row.threads_per_rank, row.gpus_per_rank * row.ranks_per_node, row.env_script,
            row.num_nodes, row.ranks_per_node, row.gpus_per_rank, (),
            # The preprocess runs once, before the first run: not on a retry.
            pp.preprocess if row.state == "READY" else "", pp.postprocess,
            pp.on_error, pp.on_timeout)


    def _python(self, row: Claimed, path: str) -> TaskSpec:
        """A call in one of the node's warm interpreters: the app's import path and the
        task's params as keyword arguments, passed on as the JSON text the claim read."""
        if needs_prefix(row.num_nodes, row.ranks_per_node):
            raise ValueError("a Python task runs in one interpreter: num_nodes and "
                             "ranks_per_node must be 1")
        env_map = _json(row.env)
        env = tuple((str(k), v if isinstance(v, str) else str(v)) for k, v in env_map.items())
        return TaskSpec(
            row.id, self.epoch, (), self.cwd(row.workflow, row.id, row.name), env,
            need_of(row.node_packing_count), float(row.wall_time_min) * 60.0,
            row.threads_per_rank, row.gpus_per_rank, python=(path, row.params or "{}"))


def _json(value: Any) -> dict[str, Any]:
    """The claim returns params and env as text: most are '{}', not worth parsing."""
    if isinstance(value, dict):
        return value
    if not value or value == "{}":
        return {}
    parsed = json.loads(value)
    return parsed if isinstance(parsed, dict) else {}
