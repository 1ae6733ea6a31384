"""Planning a bulk add: parent references, cycles, first states, the order of ids. Pure.

Parents of a task are given in ``parents`` as ids of tasks already in the database, or
as the ``key`` of another task of the same batch (any position: a file may list children
before parents). Ids are reserved before the insert and handed out in dependency order
(parents first), so the whole batch — tasks and dependencies — goes in as bulk
statements, and each task's first state (READY, AWAITING_PARENTS, or FAILED under a
stopped parent) is decided here, in that order.
The writer that runs these steps over a connection is ``writer.TaskWriter``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..base.errors import InputError
from .states import STOPPED, TaskState

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
        # the lists keep the given order; the sets answer "given twice?" in one look-up
        # (a list's `in` made one task with 100,000 parents take 41 s to add)
        mine_seen: set[int] = set()
        theirs_seen: set[int] = set()
        for ref in task.get("parents", ()):
            if isinstance(ref, str):
                if ref not in keys:
                    raise InputError(at(label(i)) + f"parents: no task of this batch has "
                                     f"key {ref!r}")
                if keys[ref] == i:
                    raise InputError(at(label(i)) + "parents: a task cannot be its own parent")
                if keys[ref] not in mine_seen:
                    mine_seen.add(keys[ref])
                    mine.append(keys[ref])
            else:
                if ref < 1:
                    raise InputError(at(label(i)) + f"parents: {ref} is not a task id")
                if ref not in theirs_seen:
                    theirs_seen.add(ref)
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
    """Kahn's algorithm, taking the earliest ready position first, so a batch already in
    dependency order keeps its order; a leftover task sits on a cycle and is named."""
    n = len(parents)
    waiting = [len(ps) for ps in parents]
    children: list[list[int]] = [[] for _ in range(n)]
    for child, ps in enumerate(parents):
        for parent in ps:
            children[parent].append(child)
    ready = [i for i in range(n) if waiting[i] == 0]  # ascending: already a heap
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in children[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(order) < n:
        stuck = next(i for i in range(n) if waiting[i] > 0)
        key = tasks[stuck].get("key")
        raise InputError(at(label(stuck)) + f"parents: the dependencies of key {key!r} form a "
                         "cycle; a task cannot (indirectly) depend on itself")
    return order


def ids_in_order(p: Plan, first: int) -> list[int]:
    """The id of each input (by position) from a block starting at ``first``, handed out
    in dependency order: a parent of the batch always has a smaller id than its child,
    which is how the database knows the new dependencies make no cycle (0012)."""
    ids = [0] * len(p.order)
    for rank, i in enumerate(p.order):
        ids[i] = first + rank
    return ids


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


def mark_first_states(tasks: Sequence[dict[str, Any]],
                      first: Sequence[tuple[str, int, int | None, str]]) -> None:
    """Write each task's first state into it, where it is not the default (READY)."""
    ready = TaskState.READY.value
    for task, (state, pending, failed_by, message) in zip(tasks, first, strict=True):
        if state != ready:
            task["state"] = state
            task["pending_parents"] = pending
            task["failed_by"] = failed_by
            task["state_message"] = message


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
