"""Planning a bulk add: parent references, cycles, first states, the JSON rows. Pure.

Parents of a task are given in ``parents`` as ids of tasks already in the database, or
as the ``key`` of another task of the same batch (any position: a file may list children
before parents). Ids are reserved before the insert, so the whole batch — tasks and
dependencies — goes in as bulk statements, and each task's first state (READY,
AWAITING_PARENTS, or FAILED under a stopped parent) is decided here, in dependency order.
The writer that runs these steps over a connection is ``taskadd.TaskWriter``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..base.errors import InputError
from .states import STOPPED, TaskState
from .validate import TASK_DEFAULTS

Label = Callable[[int], str]


def default_label(i: int) -> str:
    return f"task #{i + 1}"


def at(label: str) -> str:
    """The prefix of an error about one input ("tasks.jsonl line 7: "), if it has a name."""
    return f"{label}: " if label else ""


@dataclass
class Plan:
    """Which task needs which parent, and an order in which parents come first."""

    existing: list[int] = field(default_factory=list)  # ids of parents already stored
    in_batch: list[list[int]] = field(default_factory=list)  # per task: parent positions
    outside: list[list[int]] = field(default_factory=list)  # per task: existing parent ids
    order: list[int] = field(default_factory=list)  # positions, parents before children


def plan(tasks: Sequence[Mapping[str, Any]], label: Label = default_label) -> Plan:
    """Resolve ``parents`` and ``key`` and order the batch; refuse unknown keys and cycles."""
    if not any(t.get("parents") or t.get("key") is not None for t in tasks):
        # the common case: independent tasks
        n = len(tasks)
        return Plan([], [[] for _ in range(n)], [[] for _ in range(n)], list(range(n)))
    keys: dict[str, int] = {}
    for i, task in enumerate(tasks):
        key = task.get("key")
        if key is not None:
            if key in keys:
                raise InputError(at(label(i)) + f"key: {key!r} is also the key of "
                                 f"{label(keys[key])}; keys must be unique in a batch")
            keys[key] = i
    p = Plan()
    seen: set[int] = set()
    for i, task in enumerate(tasks):
        mine: list[int] = []
        theirs: list[int] = []
        for ref in task.get("parents", ()):
            if isinstance(ref, str):
                if ref not in keys:
                    raise InputError(at(label(i)) + f"parents: no task of this batch has "
                                     f"key {ref!r}")
                if keys[ref] == i:
                    raise InputError(at(label(i)) + "parents: a task cannot be its own parent")
                if keys[ref] not in mine:
                    mine.append(keys[ref])
            else:
                if ref < 1:
                    raise InputError(at(label(i)) + f"parents: {ref} is not a task id")
                if ref not in theirs:
                    theirs.append(ref)
                if ref not in seen:
                    seen.add(ref)
                    p.existing.append(ref)
        p.in_batch.append(mine)
        p.outside.append(theirs)
    p.order = _topological(p.in_batch, tasks, label)
    return p


def _topological(parents: list[list[int]], tasks: Sequence[Mapping[str, Any]],
                 label: Label) -> list[int]:
    """Kahn's algorithm; a leftover task sits on a cycle and is named in the error."""
    n = len(parents)
    waiting = [len(ps) for ps in parents]
    children: list[list[int]] = [[] for _ in range(n)]
    for child, ps in enumerate(parents):
        for parent in ps:
            children[parent].append(child)
    ready = [i for i in range(n) if waiting[i] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for c in children[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                ready.append(c)
    if len(order) < n:
        stuck = next(i for i in range(n) if waiting[i] > 0)
        key = tasks[stuck].get("key")
        raise InputError(at(label(stuck)) + f"parents: the dependencies of key {key!r} form a "
                         "cycle; a task cannot (indirectly) depend on itself")
    return order


def initial_states(tasks: Sequence[Mapping[str, Any]], p: Plan, ids: Sequence[int],
                   parent_states: Mapping[int, str]) -> list[tuple[str, int, int | None, str]]:
    """(state, pending_parents, failed_by, state_message) of each new task."""
    ready = (TaskState.READY.value, 0, None, "")
    if not p.existing and not any(p.in_batch):
        return [ready] * len(tasks)
    out: list[tuple[str, int, int | None, str]] = [ready] * len(tasks)
    stopped = {s.value for s in STOPPED}
    for i in p.order:
        fails = tasks[i].get("fail_with_parents", True)
        pending = 0
        root: int | None = None
        root_state = ""
        for pid in p.outside[i]:
            st = parent_states[pid]
            if st == TaskState.JOB_FINISHED.value:
                continue
            if st in stopped:
                if fails and root is None:
                    root, root_state = pid, st
                continue
            pending += 1
        for j in p.in_batch[i]:
            st = out[j][0]
            if st == TaskState.FAILED.value:
                if fails and root is None:
                    root, root_state = ids[j], st
                continue
            pending += 1
        if root is not None:
            out[i] = (TaskState.FAILED.value, pending, root,
                      f"upstream task {root} is {root_state}")
        elif pending:
            out[i] = (TaskState.AWAITING_PARENTS.value, pending, None, "")
        else:
            out[i] = (TaskState.READY.value, 0, None, "")
    return out


def json_chunk(tasks: Sequence[dict[str, Any]], ids: Sequence[int],
               first: Sequence[tuple[str, int, int | None, str]] | None
               ) -> tuple[str, str]:
    """The (base, rows) parameters of tasks.sql's tasks_insert_json for one chunk.

    Rows are the checked tasks (keys are column names) with their id and, when not
    READY, their first state. A value every task of the chunk shares (the workflow, the
    app, the packing of a typical ensemble) moves into the base record next to the
    defaults, so each row carries only what differs: less JSON to write and to parse.
    ``parents`` and ``key`` are not columns; the server ignores them."""
    ready = TaskState.READY.value
    for task, task_id in zip(tasks, ids, strict=True):
        task["id"] = task_id
    if first is not None:
        for task, (state, pending, failed_by, message) in zip(tasks, first, strict=True):
            if state != ready:
                task["state"] = state
                task["pending_parents"] = pending
                task["failed_by"] = failed_by
                task["state_message"] = message
    base = dict(TASK_DEFAULTS)
    if len(tasks) > 1:
        head = tasks[0]
        missing = object()
        for key in [k for k in head if k not in ("id", "parents", "key")]:
            value = head[key]
            if all(t.get(key, missing) == value for t in tasks):
                base[key] = value
                for t in tasks:
                    del t[key]
    dumps = json.dumps
    return dumps(base, separators=(",", ":")), dumps(tasks, separators=(",", ":"))


def dep_arrays(p: Plan, ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """(children, parents) id arrays of every new dependency."""
    children: list[int] = []
    parents: list[int] = []
    for i, (mine, theirs) in enumerate(zip(p.in_batch, p.outside, strict=True)):
        for j in mine:
            children.append(ids[i])
            parents.append(ids[j])
        for pid in theirs:
            children.append(ids[i])
            parents.append(pid)
    return children, parents
