"""The plan of a streamed bulk add, in compact arrays: what plan.py decides, without
holding the tasks.

The first pass of a streamed add (streamed.py) hands each validated task to ``Survey``,
which keeps only what checks across lines need — each task's line, its ``key``, its
``parents`` and ``fail_with_parents`` — in arrays of machine integers (a few dozen bytes a
task with parents, 17 without) instead of the tasks. ``finish`` then resolves keys (a
parent may come later in the file), orders the batch parents first and decides first
states exactly as plan.py does — same errors, same order, same ids — so a file added
through either path writes the same rows.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Mapping
from typing import Any

from ..base.errors import InputError
from .plan import at
from .states import STOPPED, TaskState

_POS, _ID, _FWD = 0, 1, 2  # a parent reference: a position, a stored id, a later key
READY, AWAITING, FAILED = 0, 1, 2  # first state codes
_STATE_NAMES = (TaskState.READY.value, TaskState.AWAITING_PARENTS.value,
                TaskState.FAILED.value)
_STOPPED = tuple(sorted(s.value for s in STOPPED))


class Survey:
    """What the first pass keeps of each task (see the module's docstring)."""

    def __init__(self, label: Callable[[int], str]) -> None:
        self.label = label  # position -> "tasks.jsonl line 7"
        self.n = 0
        self.dag = False
        self.keys: dict[str, int] = {}
        self.duplicate: str | None = None  # the first duplicate key's error
        self.self_parent: tuple[int, int] | None = None  # (position, ref index)
        self.ref_off = array("q", [0])
        self.ref_val = array("q")
        self.ref_kind = bytearray()
        self.forward: list[str] = []  # keys not seen yet when named
        self.fails = bytearray()

    def add(self, task: Mapping[str, Any]) -> None:
        """One validated task, the next position."""
        i = self.n
        self.n += 1
        self.fails.append(1 if task.get("fail_with_parents", True) else 0)
        key = task.get("key")
        if key is not None:
            if key in self.keys:
                if self.duplicate is None:
                    self.duplicate = (at(self.label(i)) + f"key: {key!r} is also the key of "
                                      f"{self.label(self.keys[key])}; keys must be unique "
                                      "in a batch")
            else:
                self.keys[key] = i
        for j, ref in enumerate(task.get("parents", ())):
            if isinstance(ref, str):
                pos = self.keys.get(ref)
                if pos is None:
                    self.ref_kind.append(_FWD)
                    self.ref_val.append(len(self.forward))
                    self.forward.append(ref)
                    continue
                if pos == i and self.self_parent is None:
                    self.self_parent = (i, j)
                self.ref_kind.append(_POS)
                self.ref_val.append(pos)
            else:
                self.ref_kind.append(_ID)
                self.ref_val.append(ref)
        self.ref_off.append(len(self.ref_val))


class Plan:
    """A resolved batch: per task (by position) its parents in the batch and stored, in
    compressed rows; the order parents first; the stored parents to lock."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.in_off = array("q", [0])
        self.in_pos = array("q")
        self.out_off = array("q", [0])
        self.out_ids = array("q")
        self.existing = array("q")
        self.order = array("q")


def finish(s: Survey) -> Plan:
    """Resolve keys and order the batch: plan.plan's checks and errors, in its order."""
    if s.duplicate is not None:
        raise InputError(s.duplicate)
    p = Plan(s.n)
    seen: set[int] = set()
    bad: tuple[int, int, str] | None = None
    for i in range(s.n):
        lo, hi = s.ref_off[i], s.ref_off[i + 1]
        mine: set[int] = set()
        theirs: set[int] = set()
        for k in range(lo, hi):
            kind, val = s.ref_kind[k], s.ref_val[k]
            if kind == _FWD:
                ref = s.forward[val]
                pos = s.keys.get(ref)
                if pos is None:
                    bad = (i, k - lo, f"parents: no task of this batch has key {ref!r}")
                    break
                if pos == i:  # its own key, given after its parents on the line
                    bad = (i, k - lo, "parents: a task cannot be its own parent")
                    break
                kind, val = _POS, pos
            if kind == _POS:
                if (i, k - lo) == s.self_parent:
                    bad = (i, k - lo, "parents: a task cannot be its own parent")
                    break
                if val not in mine:
                    mine.add(val)
                    p.in_pos.append(val)
            else:
                if val < 1:
                    bad = (i, k - lo, f"parents: {val} is not a task id")
                    break
                if val not in theirs:
                    theirs.add(val)
                    p.out_ids.append(val)
                if val not in seen:
                    seen.add(val)
                    p.existing.append(val)
        if bad is not None:
            break
        p.in_off.append(len(p.in_pos))
        p.out_off.append(len(p.out_ids))
    if bad is not None:
        raise InputError(at(s.label(bad[0])) + bad[2])
    p.order = _topological(p, s)
    return p


def _topological(p: Plan, s: Survey) -> array:  # type: ignore[type-arg]
    """plan._topological over compressed rows: the earliest ready position first. The
    tasks without parents in the batch are ready from the start and come in ascending
    order, so only the children that became ready wait in the heap."""
    n = p.n
    waiting = array("l", (p.in_off[i + 1] - p.in_off[i] for i in range(n)))
    child_off = array("q", [0]) * (n + 1)
    for k in range(len(p.in_pos)):
        child_off[p.in_pos[k] + 1] += 1
    for i in range(n):
        child_off[i + 1] += child_off[i]
    fill = array("q", child_off)
    children = array("q", [0]) * len(p.in_pos)
    for c in range(n):
        for k in range(p.in_off[c], p.in_off[c + 1]):
            parent = p.in_pos[k]
            children[fill[parent]] = c
            fill[parent] += 1
    del fill
    order = array("q")
    heap: list[int] = []
    root = 0  # the next position that may be a root (no parent in the batch)
    while True:
        while root < n and p.in_off[root + 1] != p.in_off[root]:
            root += 1
        if heap and (root >= n or heap[0] < root):
            i = heapq.heappop(heap)
        elif root < n:
            i = root
            root += 1
        else:
            break
        order.append(i)
        for k in range(child_off[i], child_off[i + 1]):
            c = children[k]
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(heap, c)
    if len(order) < n:
        stuck = next(i for i in range(n) if waiting[i] > 0)
        key = next((k for k, v in s.keys.items() if v == stuck), None)
        raise InputError(at(s.label(stuck)) + f"parents: the dependencies of key {key!r} "
                         "form a cycle; a task cannot (indirectly) depend on itself")
    return order


def ids_in_order(p: Plan, first: int) -> array:  # type: ignore[type-arg]
    """plan.ids_in_order: each position's id, handed out parents first."""
    ids = array("q", [0]) * p.n
    for rank, i in enumerate(p.order):
        ids[i] = first + rank
    return ids


class FirstStates:
    """Each new task's first state, by position (plan.initial_states, compactly)."""

    def __init__(self, n: int) -> None:
        self.code = bytearray(n)  # READY, AWAITING or FAILED
        self.pending = array("l", [0]) * n
        self.failed_by = array("q", [0]) * n
        self.root_state = bytearray(n)  # index into _STOPPED (FAILED roots)

    def fields(self, i: int) -> dict[str, Any] | None:
        """The state fields of task ``i`` (plan.mark_first_states), None for READY."""
        code = self.code[i]
        if code == READY:
            return None
        failed_by = self.failed_by[i] if code == FAILED else None
        message = (f"upstream task {failed_by} is {_STOPPED[self.root_state[i]]}"
                   if code == FAILED else "")
        return {"state": _STATE_NAMES[code], "pending_parents": self.pending[i],
                "failed_by": failed_by, "state_message": message}


def first_states(p: Plan, s: Survey, ids: array,  # type: ignore[type-arg]
                 parent_states: Mapping[int, str]) -> FirstStates:
    """plan.initial_states: in dependency order, from the stored parents' states and the
    first states already decided for the parents of the batch."""
    out = FirstStates(p.n)
    finished = TaskState.JOB_FINISHED.value
    stopped = set(_STOPPED)
    failed_index = _STOPPED.index(TaskState.FAILED.value)
    for i in p.order:
        fails = s.fails[i]
        pending = 0
        root = 0
        root_state = 0
        for k in range(p.out_off[i], p.out_off[i + 1]):
            pid = p.out_ids[k]
            st = parent_states[pid]
            if st == finished:
                continue
            if st in stopped:
                if fails and not root:
                    root, root_state = pid, _STOPPED.index(st)
                continue
            pending += 1
        for k in range(p.in_off[i], p.in_off[i + 1]):
            j = p.in_pos[k]
            if out.code[j] == FAILED:
                if fails and not root:
                    root, root_state = ids[j], failed_index
                continue
            pending += 1
        if root:
            out.code[i] = FAILED
            out.failed_by[i] = root
            out.root_state[i] = root_state
        elif pending:
            out.code[i] = AWAITING
        out.pending[i] = pending if root or pending else 0
    return out


def dep_arrays(p: Plan, ids: array) -> tuple[array, array]:  # type: ignore[type-arg]
    """plan.dep_arrays: (children, parents) ids of every new dependency, in its order."""
    from ..base.idarrays import id_array

    children = id_array()
    parents = id_array()
    for i in range(p.n):
        for k in range(p.in_off[i], p.in_off[i + 1]):
            children.append(ids[i])
            parents.append(ids[p.in_pos[k]])
        for k in range(p.out_off[i], p.out_off[i + 1]):
            children.append(ids[i])
            parents.append(p.out_ids[k])
    return children, parents
