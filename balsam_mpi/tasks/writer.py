"""Adding tasks: the one writer behind ``Client.add_tasks`` and the launcher's task API.

An add reads top-down, over any connection (the client's own, or the leader's):

1. **Validate** every input against the project's apps (``validate.check_task``): one line
   naming the input and the field, before anything is written.
2. **Plan** the batch (``taskplan.plan``): ``parents`` given as ids or as another input's
   ``key``, refused on an unknown key or a cycle, ordered parents first.
3. **Write**, in one transaction: reserve the ids, lock the stored parents and decide each
   task's first state from theirs (``taskplan.initial_states``), insert the tasks in chunks
   of JSON (``taskplan.json_chunk``), then every dependency in one statement.

A batch without parents or keys is not planned: each chunk is validated while the server
inserts the previous one (a pipeline), which is most of the speed of a 100k-task add.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import sql
from ..base import db
from ..base.errors import InputError
from . import validate
from .plan import Label, Plan, at, default_label, dep_arrays, initial_states, json_chunk
from .plan import plan as plan_batch
from .refusals import refusals

if TYPE_CHECKING:
    import psycopg

CHUNK = 25000  # tasks per INSERT of a bulk add (all chunks in one transaction)

FirstStates = list[tuple[str, int, int | None, str]]


def app_infos(conn: psycopg.Connection[Any]) -> dict[str, validate.AppInfo]:
    """What validating a task needs to know about each app of the project, by name."""
    from psycopg.rows import dict_row

    with db.translated(), conn.cursor(row_factory=dict_row) as cur:
        apps = cur.execute(sql.query("apps_all")).fetchall()
    return {a["name"]: validate.AppInfo(a["id"], a["name"], a["command"] or "",
                                        validate.placeholders(a["command"] or ""),
                                        a["error_retry_limit"], a.get("python") or "")
            for a in apps}


class TaskWriter:
    """Adds batches of tasks over one connection, each batch one transaction.

    The connection may be in autocommit mode (the client's, the leader's) or not; the
    writer opens its own transaction (a savepoint inside an open one)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def add(self, tasks: Iterable[Mapping[str, Any]], *,
            labels: Sequence[str] | None = None,
            progress: Callable[[int], None] | None = None) -> list[int]:
        """Add tasks (dicts of column names); their ids, in order. ``labels`` name the
        inputs in errors ("tasks.jsonl line 7"); ``progress`` is told how many are sent."""
        raw = list(tasks)
        if not raw:
            return []
        label: Label = labels.__getitem__ if labels is not None else default_label
        inputs = _Inputs(raw, app_infos(self.conn), label)
        plan = inputs.plan()
        conn = self.conn
        with db.translated(), conn.transaction(), refusals():
            ids = self._reserve_ids(len(raw))
            first = self._first_states(inputs, plan, ids) if plan is not None else None
            insert = sql.query("tasks_insert_json")
            with conn.pipeline():
                for lo in range(0, len(raw), CHUNK):
                    hi = min(lo + CHUNK, len(raw))
                    base, rows = json_chunk(inputs.checked(lo, hi), ids[lo:hi],
                                            first[lo:hi] if first else None)
                    conn.execute(insert, {"rows": rows, "base": base})
                    if progress is not None:
                        progress(hi)
                if plan is not None:
                    self._add_dependencies(plan, ids)
        return ids

    def _reserve_ids(self, n: int) -> list[int]:
        row = self.conn.execute(sql.query("tasks_reserve_ids"), {"n": n}).fetchone()
        assert row is not None
        return list(range(row[0], row[0] + n))

    def _first_states(self, inputs: _Inputs, plan: Plan, ids: list[int]) -> FirstStates:
        """Lock the stored parents (tasks_lock_parents: none may change state until this
        transaction ends) and decide each new task's first state from theirs."""
        states: dict[int, str] = {}
        if plan.existing:
            locked = self.conn.execute(sql.query("tasks_lock"),
                                       {"ids": plan.existing}).fetchall()
            states = {r[0]: str(r[1]) for r in locked}
            for i, theirs in enumerate(plan.outside):
                missing = [p for p in theirs if p not in states]
                if missing:
                    raise InputError(
                        at(inputs.label(i)) + f"parents: no task with id {missing[0]}")
        return initial_states(inputs.checked(0, len(ids)), plan, ids, states)

    def _add_dependencies(self, plan: Plan, ids: list[int]) -> None:
        children, parents = dep_arrays(plan, ids)
        if children:
            self.conn.execute(sql.query("tasks_deps_insert"),
                              {"children": children, "parents": parents})


class _Inputs:
    """The raw inputs of one add and their validated form, checked once each.

    With parents or keys the whole batch is validated up front (planning needs every
    task); without, a chunk is validated when it is asked for."""

    def __init__(self, raw: list[Mapping[str, Any]], apps: Mapping[str, validate.AppInfo],
                 label: Label) -> None:
        self.raw = raw
        self.apps = apps
        self.label = label
        self.dag = any(isinstance(t, Mapping) and (t.get("parents") or t.get("key") is not None)
                       for t in raw)
        self._all = self._check(0, len(raw)) if self.dag else None

    def plan(self) -> Plan | None:
        return plan_batch(self._all, self.label) if self._all is not None else None

    def checked(self, lo: int, hi: int) -> list[dict[str, Any]]:
        return self._all[lo:hi] if self._all is not None else self._check(lo, hi)

    def _check(self, lo: int, hi: int) -> list[dict[str, Any]]:
        out = []
        for i in range(lo, min(hi, len(self.raw))):
            try:
                out.append(validate.check_task(self.raw[i], self.apps))
            except InputError as exc:
                raise InputError(at(self.label(i)) + str(exc)) from None
        return out
