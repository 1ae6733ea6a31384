"""Claimed rows → the :class:`~balsam_mpi.protocol.RunOrder` a node runs (leader side).

The leader renders argv once, here, so workers need neither the database nor the apps.
Rendering is cached per command when a task has no params or args (the no-op and sleep
ensembles that dominate throughput), because splitting a command line costs more than
the rest of a task's handling in the leader. It runs on the database thread, right after
the claim, so a slow row never stalls the loop that answers the nodes.

A row that cannot become an order — a command longer than any system runs, an environment
name with ``=``, an argv past the kernel's limit, a placeholder without a value — fails
that task alone, with one line saying why (:meth:`OrderBuilder.build_all`); the database
is meant to refuse most of these at the door, but the launcher does not rely on it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, NamedTuple

from ..base.cleantext import one_line
from ..base.limits import COMMAND_MAX
from ..base.project import Project
from ..node.mpilaunch import needs_prefix
from ..node.resources import NODE_CAPACITY, need_of
from ..protocol import RunOrder
from ..tasks.argv import render_argv
from .appinfo import AppCache
from .storeport import Claimed, ClaimFilter, Held, Lease, StorePort

# What execve takes for argv and environment together on Linux (ARG_MAX, 2 MiB).
ARGV_MAX_BYTES = 2 * 1024 * 1024


class BadTask(ValueError):
    """A claimed row that cannot be run as it is; the message says why, in one line."""


class ClaimResult(NamedTuple):
    """What one claim call brings back to the leader's loop."""

    claimed: int
    orders: list[RunOrder]  # in the claim's order (priority first)
    bad: list[tuple[int, str]]  # rows that cannot run: (id, why)
    held: list[Held]  # when nothing was claimed: work other running jobs hold
    max_packing: int


def _render(command: str, params: dict[str, Any], args: list[str], shell: bool
            ) -> tuple[str, ...]:
    return tuple(render_argv(command, params, args, shell))


@lru_cache(maxsize=1024)
def _render_plain(command: str, shell: bool) -> tuple[str, ...]:
    return _render(command, {}, [], shell)


def render(command: str, params: dict[str, Any], args: list[str], shell: bool
           ) -> tuple[str, ...]:
    if not params and not args:
        return _render_plain(command, shell)
    return _render(command, params, args, shell)


class OrderBuilder:
    """Builds orders for one leader; caches the per-workflow and per-name path parts.

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

    def build(self, row: Claimed) -> RunOrder:
        """Raises BadTask / InputError / ValueError when the row cannot be run."""
        pp = self.apps.get(row.app)
        if pp.python:
            return self._python(row, pp.python, pp.task_dirs)
        if len(row.command) > COMMAND_MAX:
            raise BadTask(f"command: {len(row.command)} characters, more than "
                          f"{COMMAND_MAX}")
        params = _json(row.params, "params")
        env_map = _json(row.env, "env")
        argv = render(row.command, params, list(row.args), row.shell)
        env = tuple((_env_name(k), _env_value(k, v)) for k, v in env_map.items())
        size = sum(len(a) + 1 for a in argv) + sum(len(k) + len(v) + 2 for k, v in env)
        if size > ARGV_MAX_BYTES:
            raise BadTask(f"args: the command line and env take {size} bytes, more than "
                          f"the {ARGV_MAX_BYTES} a process may be started with")
        # A multi-rank task is its own MPI job on whole nodes (docs/architecture.md §5).
        multi = needs_prefix(row.num_nodes, row.ranks_per_node)
        inputs, parent_dirs = self._inputs(row)
        return RunOrder(
            row.id, self.epoch, tuple(argv), self.cwd(row.workflow, row.id, row.name), env,
            NODE_CAPACITY if multi else need_of(row.node_packing_count),
            float(row.wall_time_min) * 60.0,
            row.threads_per_rank, row.gpus_per_rank * row.ranks_per_node, row.env_script,
            row.num_nodes, row.ranks_per_node, row.gpus_per_rank, (),
            # The preprocess runs once, before the first run: not on a retry.
            pp.preprocess if row.state == "READY" else "", pp.postprocess,
            pp.on_error, pp.on_timeout, inputs, parent_dirs)

    def claim(self, store: StorePort, lease: Lease, *, filters: ClaimFilter,
              look_for_held: bool, **kwargs: Any) -> ClaimResult:
        """The claim call (database thread): claim, read new apps, build the orders; if
        nothing was claimed, also look at the work other running jobs hold."""
        rows = self.apps.claim(store, lease, filters=filters, **kwargs)
        orders, bad = self.build_all(rows)
        held: list[Held] = []
        if not rows and look_for_held:
            held = store.held_elsewhere(lease, filters, int(kwargs.get("max_nodes", 1)))
        return ClaimResult(len(rows), orders, bad, held,
                           max((r.node_packing_count for r in rows), default=1))

    def build_all(self, rows: list[Claimed]) -> tuple[list[RunOrder], list[tuple[int, str]]]:
        """Orders in the claim's order, and (id, why) of the rows that cannot run: one bad
        row fails its own task and nothing else."""
        orders: list[RunOrder] = []
        bad: list[tuple[int, str]] = []
        for row in rows:
            try:
                orders.append(self.build(row))
            except Exception as exc:  # whatever a hostile row can provoke: that task fails
                bad.append((row.id, one_line(f"cannot prepare the task: {exc}")))
        return orders, bad

    def _inputs(self, row: Claimed) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """input_files and the parents' directories they are linked from."""
        if not row.input_files:
            return (), ()
        return tuple(row.input_files), tuple(
            self.cwd(str(w), int(i), str(n)) for w, i, n in json.loads(row.parents or "[]"))

    def _python(self, row: Claimed, path: str, task_dirs: bool = True) -> RunOrder:
        """A call in one of the node's warm interpreters: the app's import path and the
        task's params as keyword arguments, passed on as the JSON text the claim read.
        Without task directories (the app's choice), a call that links input files
        still gets its own: that is where they are linked."""
        if needs_prefix(row.num_nodes, row.ranks_per_node):
            raise BadTask("num_nodes: a Python task runs in one interpreter: num_nodes and "
                          "ranks_per_node must be 1")
        env_map = _json(row.env, "env")
        env = tuple((_env_name(k), _env_value(k, v)) for k, v in env_map.items())
        inputs, parent_dirs = self._inputs(row)
        return RunOrder(
            row.id, self.epoch, (), self.cwd(row.workflow, row.id, row.name), env,
            need_of(row.node_packing_count), float(row.wall_time_min) * 60.0,
            row.threads_per_rank, row.gpus_per_rank, inputs=inputs, parent_dirs=parent_dirs,
            python=(path, row.params or "{}"), own_dir=task_dirs or bool(inputs))


def _env_name(key: Any) -> str:
    name = str(key)
    if not name or "=" in name or "\x00" in name:
        raise BadTask(f"env: {name!r} is not a valid environment variable name")
    return name


def _env_value(name: str, value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        raise BadTask(f"env: the value of {name} contains a NUL byte")
    return text


def _json(value: Any, field: str) -> dict[str, Any]:
    """The claim returns params and env as text: most are '{}', not worth parsing."""
    if isinstance(value, dict):
        return value
    if not value or value == "{}":
        return {}
    parsed = json.loads(value)
    if not isinstance(parsed, dict):
        raise BadTask(f"{field}: must be a JSON object")
    return parsed
