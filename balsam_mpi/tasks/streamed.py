"""A bulk add from a source read twice (``task add --from-file``), in bounded memory.

``TaskWriter.add`` takes the whole batch as a list; a million tasks from a file held
1.5 GB that way. Here the source is read twice and no pass holds more than one chunk:

1. **Check**: every task is validated (``validate.check_task``) as it is read, and only
   what checks across lines need is kept (``streamplan.Survey``: lines, keys, parents).
   A bad line anywhere is refused here, before the database is touched, with the error
   the list path gives: a file's own errors (malformed JSON, bad UTF-8) first, wherever
   they are, then the first invalid task, then unknown keys and cycles.
2. **Write**, in one transaction: the batch's ids reserved once (by count), then the
   source read again, each chunk validated again, given its ids and first states,
   encoded and copied into the staging table. A batch without parents or keys is moved
   chunk by chunk, exactly as ``TaskWriter._add_chunks`` moves it (same chunks, same
   pipeline); a batch with them is copied chunk by chunk and moved once with every
   dependency, as ``TaskWriter._add_dag``. The rows, ids, events and messages are the
   list path's. The source must prove it read the same bytes both times
   (``check_unchanged``) before the transaction commits.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

from .. import sql
from ..base import db
from ..base.errors import BalsamError, InputError
from ..base.idarrays import id_array, register
from . import streamplan, validate
from .plan import at
from .refusals import refusals
from .writer import (
    CHUNK,
    TaskWriter,
    _cycles_collected_after,
    _located,
    app_infos,
    chunks,
    encode_rows,
    stage_columns,
    stage_rows,
)

if TYPE_CHECKING:
    import psycopg

Progress = Callable[[int], None] | None


class Source(Protocol):
    """Tasks that can be read more than once (taskfile.TaskFile, spool.SpooledTasks).

    A source may also have ``keep(task)``: the first pass then hands it each task as
    checked, in order, and the second pass reads those back and does not check them
    again. Only for a source nobody else can change between the passes (the spool);
    a file is read and checked again."""

    def records(self) -> Iterator[tuple[int, Mapping[str, Any]]]: ...  # (line, task)
    def label(self, line: int) -> str: ...
    def check_unchanged(self) -> None: ...


def add_streamed(conn: psycopg.Connection[Any], source: Source,
                 progress_for: Callable[[int], Progress] = lambda n: None) -> array:  # type: ignore[type-arg]
    """Add every task of ``source`` in one transaction; their ids in input order.
    ``progress_for(n)`` makes the progress callback once the number of tasks is known."""
    with _cycles_collected_after():
        return _Streamed(conn, source).add(progress_for)


class _Streamed:
    def __init__(self, conn: psycopg.Connection[Any], source: Source) -> None:
        self.conn = conn
        register(conn)  # the batch's ids go as compact arrays (base/idarrays.py)
        self.source = source
        self.apps = app_infos(conn)
        self.lines = array("q")  # position -> line number
        self.survey = streamplan.Survey(self.label)
        self.keep: Callable[[dict[str, Any]], None] | None = getattr(source, "keep", None)

    def label(self, i: int) -> str:
        return self.source.label(self.lines[i])

    def add(self, progress_for: Callable[[int], Progress]) -> array:  # type: ignore[type-arg]
        self._check()
        s = self.survey
        if s.n == 0:
            return array("q")
        plan = streamplan.finish(s) if s.dag else None
        progress = progress_for(s.n)
        ids: Any = ()
        try:
            with db.translated(), self.conn.transaction(), refusals():
                row = self.conn.execute(sql.query("tasks_stage_begin"),
                                        {"n": s.n}).fetchone()
                assert row is not None
                if plan is None:
                    ids = range(row[0], row[0] + s.n)
                    self._write_chunks(ids, progress)
                else:
                    ids = streamplan.ids_in_order(plan, row[0])
                    self._write_dag(plan, ids, progress)
        except BalsamError as exc:
            located = _located(exc, ids, self.label)
            if located is exc:
                raise
            raise located from exc.__cause__
        return array("q", ids)

    def _check(self) -> None:
        """Pass 1. The file's own errors (from reading it) come first wherever they are,
        as when the whole file was read before any task was checked; then the first
        invalid task."""
        s = self.survey
        bad: InputError | None = None
        for line, raw in self.source.records():
            self.lines.append(line)
            if isinstance(raw, Mapping) and (raw.get("parents") or
                                             raw.get("key") is not None):
                s.dag = True
            if bad is not None:
                s.n += 1
                continue
            try:
                task = validate.check_task(raw, self.apps)
            except InputError as exc:
                bad = InputError(at(self.label(s.n)) + str(exc))
                s.n += 1
                continue
            if self.keep is not None:
                self.keep(task)
            s.add(task)
        if bad is not None:
            raise bad

    def _checked(self, records: Iterator[tuple[int, Mapping[str, Any]]], lo: int,
                 hi: int) -> list[dict[str, Any]]:
        """Pass 2: tasks lo…hi-1, validated again (the checks are the transaction's
        last word on what is written, not the first pass's), unless the source kept them
        as the first pass checked them (``keep``)."""
        out = []
        for i, (line, raw) in enumerate(islice(records, hi - lo), lo):
            if line != self.lines[i]:
                self.source.check_unchanged()  # raises: the file is not what was checked
            if self.keep is not None:
                out.append(dict(raw))  # as the first pass checked it, kept by the source
                continue
            try:
                out.append(validate.check_task(raw, self.apps))
            except InputError as exc:
                raise InputError(at(self.label(i)) + str(exc)) from None
        if len(out) != hi - lo:
            self.source.check_unchanged()
        return out

    def _write_chunks(self, ids: range, progress: Progress) -> None:
        """TaskWriter._add_chunks over the second pass."""
        conn = self.conn
        move = sql.query("tasks_stage_move")
        nothing: dict[str, list[int]] = {"children": [], "parents": []}
        records = self.source.records()
        staged = False
        for lo, hi in chunks(len(ids)):
            with conn.pipeline():
                if staged:
                    conn.execute(move, nothing)
                checked = self._checked(records, lo, hi)
                columns = stage_columns(checked)
                data = encode_rows(conn, columns, stage_rows(checked, ids[lo:hi], columns))
            TaskWriter(conn)._copy(columns, data)
            staged = True
            if progress is not None:
                progress(hi)
        self._finish(records)
        conn.execute(move, nothing)

    def _write_dag(self, plan: streamplan.Plan, ids: array,  # type: ignore[type-arg]
                   progress: Progress) -> None:
        """TaskWriter._add_dag: the stored parents locked and their states read, every
        row staged (a chunk at a time), then one move with every dependency."""
        states = self._lock_parents(plan)
        first = streamplan.first_states(plan, self.survey, ids, states)
        del states
        records = self.source.records()
        n = plan.n
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            checked = self._checked(records, lo, hi)
            for i, task in enumerate(checked, lo):
                fields = first.fields(i)
                if fields is not None:
                    task.update(fields)
            columns = stage_columns(checked)
            TaskWriter(self.conn)._copy(
                columns, encode_rows(self.conn, columns, stage_rows(checked, ids[lo:hi],
                                                                   columns)))
            if progress is not None:
                progress(hi)
        self._finish(records)
        del first
        children, parents = streamplan.dep_arrays(plan, ids)
        self.conn.execute(sql.query("tasks_stage_move"),
                          {"children": children, "parents": parents})

    def _lock_parents(self, plan: streamplan.Plan) -> dict[int, str]:
        if not len(plan.existing):
            return {}
        locked = self.conn.execute(sql.query("tasks_lock"),
                                   {"ids": id_array(plan.existing)}).fetchall()
        states = {r[0]: str(r[1]) for r in locked}
        for i in range(plan.n):
            for k in range(plan.out_off[i], plan.out_off[i + 1]):
                if plan.out_ids[k] not in states:
                    raise InputError(at(self.label(i)) +
                                     f"parents: no task with id {plan.out_ids[k]}")
        return states

    def _finish(self, records: Iterator[tuple[int, Mapping[str, Any]]]) -> None:
        """The second pass read to its end (nothing more than the first found) and the
        same bytes as the first."""
        for _extra in records:
            pass  # a task more than the first pass found: the digests will differ
        self.source.check_unchanged()
