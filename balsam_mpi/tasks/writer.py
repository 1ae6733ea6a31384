"""Adding tasks: the one writer behind ``Client.add_tasks`` and the launcher's task API.

An add reads top-down, over any connection (the client's own, or the leader's):

1. **Validate** every input against the project's apps (``validate.check_task``): one line
   naming the input and the field, before anything is written.
2. **Plan** the batch (``plan.plan``): ``parents`` given as ids or as another input's
   ``key``, refused on an unknown key or a cycle, ordered parents first.
3. **Write**, in one transaction: reserve the ids (handed out parents first), lock the
   stored parents and decide each task's first state from theirs
   (``plan.initial_states``), binary ``COPY`` the rows into the session's staging
   table, and move them — with the dependencies — into ``tasks`` through the checked
   function ``tasks_add_staged`` (migrations/0012), which checks everything again.

A batch without parents or keys is not planned: it goes in chunks, and each chunk is
validated while the server moves the previous one (a pipeline), which is most of the
speed of a 100k-task add. A refusal of the database that names a task of the add is
reported under that input's own name, as the client's own checks are.
"""

from __future__ import annotations

import contextlib
import gc
import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from .. import sql
from ..base import db
from ..base.errors import BalsamError, InputError
from . import validate
from .plan import (
    Label,
    Plan,
    at,
    default_label,
    dep_arrays,
    ids_in_order,
    initial_states,
    mark_first_states,
)
from .plan import plan as plan_batch
from .refusals import refusals

if TYPE_CHECKING:
    import psycopg

CHUNK = 25000  # at most, tasks per COPY of a bulk add without parents (one transaction)
FIRST_CHUNK = 1000  # small, so the server starts while the client checks the rest
CHUNK_GROWTH = 1.5

FirstStates = list[tuple[str, int, int | None, str]]

# The staging table's columns (migrations/0012, tasks_stage_open) and their binary types.
STAGE_TYPES: dict[str, str] = {
    "id": "int8", "workflow": "text", "name": "text", "app_id": "int8", "params": "jsonb",
    "args": "text[]", "tags": "jsonb", "num_nodes": "int4", "ranks_per_node": "int4",
    "threads_per_rank": "int4", "gpus_per_rank": "int4", "node_packing_count": "int4",
    "wall_time_min": "float8", "env": "jsonb", "input_files": "text[]", "priority": "int4",
    "state": "text", "state_message": "text", "error_retry_limit": "int4",
    "timeout_retry_limit": "int4", "lost_retry_limit": "int4", "fail_with_parents": "bool",
    "pending_parents": "int4", "failed_by": "int8", "data": "jsonb",
}

_TASK_REFUSED = re.compile(r"^task (\d+): ")
_FAILING_ROW = re.compile(r"^Failing row contains \((\d+),")


def app_infos(conn: psycopg.Connection[Any]) -> dict[str, validate.AppInfo]:
    """What validating a task needs to know about each app of the project, by name."""
    from psycopg.rows import dict_row

    with db.translated(), conn.cursor(row_factory=dict_row) as cur:
        apps = cur.execute(sql.query("apps_all")).fetchall()
    return {a["name"]: validate.AppInfo(a["id"], a["name"], a["command"] or "",
                                        validate.placeholders(a["command"] or ""),
                                        a["error_retry_limit"], a.get("python") or "")
            for a in apps}


def stage_columns(tasks: Sequence[Mapping[str, Any]]) -> list[str]:
    """The staging columns a chunk gives, in the table's order (``id`` always); the rest
    take the table's defaults."""
    given = set().union(*tasks) if tasks else set()
    return [c for c in STAGE_TYPES if c == "id" or c in given]


def stage_rows(tasks: Sequence[Mapping[str, Any]], ids: Sequence[int],
               columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """One tuple per task in ``columns`` order; a column a task leaves out gets the
    default (``validate.TASK_DEFAULTS``, the same as the table's)."""
    rest = [c for c in columns if c != "id"]
    if not rest:
        return [(task_id,) for task_id in ids]
    # The common case, every task giving every column: one C call per task.
    pick = itemgetter(*rest)
    try:
        if len(rest) == 1:
            return [(task_id, pick(task)) for task, task_id in zip(tasks, ids, strict=True)]
        return [(task_id, *pick(task)) for task, task_id in zip(tasks, ids, strict=True)]
    except KeyError:
        pass
    defaults = [(c, validate.TASK_DEFAULTS.get(c)) for c in rest]
    return [(task_id, *[task.get(c, d) for c, d in defaults])
            for task, task_id in zip(tasks, ids, strict=True)]


def encode_rows(conn: psycopg.Connection[Any], columns: Sequence[str],
                rows: Iterable[Sequence[Any]]) -> bytes:
    """The binary COPY data of ``rows``: psycopg's own formatter, written to memory
    instead of the connection. It sends nothing, so it may run inside a pipeline while
    the server works; a separate encode and send measured about 10% faster in all than
    encoding row by row into the open COPY, which leaves the server waiting."""
    from psycopg.copy import Copy, FileWriter

    buf = io.BytesIO()
    with conn.cursor() as cur, Copy(cur, binary=True, writer=FileWriter(buf)) as copy:
        copy.set_types([STAGE_TYPES[c] for c in columns])
        write = copy.write_row
        for row in rows:
            write(row)
    return buf.getvalue()


def chunks(n: int) -> list[tuple[int, int]]:
    """(lo, hi) of each chunk of an add of ``n`` independent tasks: small first, so the
    server starts early, then each CHUNK_GROWTH times the last, up to CHUNK. The client
    checks chunk k+1 while the server moves chunk k, which takes longer; a chunk much
    larger than the one before would keep the server waiting for the client."""
    bounds, size = [0], FIRST_CHUNK
    while bounds[-1] < n:
        bounds.append(min(n, bounds[-1] + size))
        size = min(CHUNK, int(size * CHUNK_GROWTH))
    return list(pairwise(bounds))


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
        with _cycles_collected_after():
            return self._add(raw, labels, progress)

    def _add(self, raw: list[Mapping[str, Any]], labels: Sequence[str] | None,
             progress: Callable[[int], None] | None) -> list[int]:
        label: Label = labels.__getitem__ if labels is not None else default_label
        inputs = _Inputs(raw, app_infos(self.conn), label)
        plan = inputs.plan()
        ids: list[int] = []
        try:
            with db.translated(), self.conn.transaction(), refusals():
                row = self.conn.execute(sql.query("tasks_stage_begin"),
                                        {"n": len(raw)}).fetchone()
                assert row is not None
                if plan is None:
                    ids = list(range(row[0], row[0] + len(raw)))
                    self._add_chunks(inputs, ids, progress)
                else:
                    ids = ids_in_order(plan, row[0])
                    self._add_dag(inputs, plan, ids, progress)
        except BalsamError as exc:
            located = _located(exc, ids, label)
            if located is exc:
                raise
            raise located from exc.__cause__
        return ids

    def _add_chunks(self, inputs: _Inputs, ids: list[int],
                    progress: Callable[[int], None] | None) -> None:
        """Independent tasks: while the server moves chunk k, chunk k+1 is validated."""
        conn = self.conn
        move = sql.query("tasks_stage_move")
        nothing: dict[str, list[int]] = {"children": [], "parents": []}
        staged = False
        for lo, hi in chunks(len(ids)):
            with conn.pipeline():
                if staged:
                    conn.execute(move, nothing)
                # Checked, built and encoded while the server moves the previous chunk:
                # what is left for the COPY itself is sending bytes.
                checked = inputs.checked(lo, hi)
                columns = stage_columns(checked)
                data = encode_rows(self.conn, columns, stage_rows(checked, ids[lo:hi], columns))
            self._copy(columns, data)
            staged = True
            if progress is not None:
                progress(hi)
        conn.execute(move, nothing)

    def _add_dag(self, inputs: _Inputs, plan: Plan, ids: list[int],
                 progress: Callable[[int], None] | None) -> None:
        """Tasks with parents: first states from the locked parents, every row staged,
        then one move with every dependency (the server checks them against the rows)."""
        checked = inputs.checked(0, len(ids))
        mark_first_states(checked, self._first_states(inputs, plan, ids))
        columns = stage_columns(checked)
        self._copy(columns, encode_rows(self.conn, columns, stage_rows(checked, ids, columns)))
        if progress is not None:
            progress(len(ids))
        children, parents = dep_arrays(plan, ids)
        self.conn.execute(sql.query("tasks_stage_move"),
                          {"children": children, "parents": parents})

    def _copy(self, columns: Sequence[str], data: bytes) -> None:
        from psycopg import sql as pgsql

        statement = pgsql.SQL(sql.query("tasks_stage_copy")).format(
            columns=pgsql.SQL(", ").join(map(pgsql.Identifier, columns)))
        with self.conn.cursor() as cur, cur.copy(statement) as copy:
            copy.write(data)

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


@contextlib.contextmanager
def _cycles_collected_after() -> Iterator[None]:
    """Python's cycle collector paused while an add runs: 100k tasks make some 400k
    dicts, lists and tuples (none in a cycle), and the collector walked all of them again
    and again — a third of the client's CPU time for a 100k-task add. Reference counting
    still frees everything; cycles made meanwhile anywhere are collected afterwards."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _located(exc: BalsamError, ids: Sequence[int], label: Label) -> BalsamError:
    """A refusal of the database about one task of this add, under the input's name:
    "task 1234: state: …" (tasks_add_staged) or a CHECK constraint's failing row (its first
    value is the id) becomes "tasks.jsonl line 7: state: …", an input error (exit 2)."""
    cause = exc.__cause__
    task_id: int | None = None
    message = str(exc)
    found = _TASK_REFUSED.match(message)
    if found:
        task_id, message = int(found.group(1)), message[found.end():]
    else:
        detail = getattr(getattr(cause, "diag", None), "message_detail", None) or ""
        row = _FAILING_ROW.match(detail)
        if row:
            task_id = int(row.group(1))
    if task_id is None or not ids or not (min(ids) <= task_id <= max(ids)):
        return exc
    try:
        pos = ids.index(task_id)  # a list, a range or an array
    except ValueError:
        return exc
    return InputError(at(label(pos)) + message)


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
